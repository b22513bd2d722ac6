"""Charts drawn by the site itself: SVG written on the server into the page.

No script and no chart library: the page works under the site's strict Content-Security-Policy
(scripts only from the site's own files) and fetches nothing. Each bar or point carries a <title>,
which browsers show on hover, and each chart an aria-label.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from math import ceil, floor, log10

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 560, 190
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 10, 24  # room for the axis labels
PLOT_HEIGHT = HEIGHT - TOP - BOTTOM
# Told apart by colour and by the legend's order; the first ones are the most used.
PALETTE = ("#2563eb", "#f79009", "#12b76a", "#7a5af8", "#f04438", "#0ba5ec", "#ee46bc", "#667085", "#98a2b3")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: dict[date, float]  # a day, or a moment (a datetime is a date too)
    colour: str = ""


@dataclass(frozen=True, slots=True)
class Axis:
    """The x axis: the days (or moments) drawn, left to right, and how their labels read."""

    points: Sequence[date]
    label_format: str = "%b %-d"
    labels: int = 5  # about how many of the points are labelled

    def x(self, index: int) -> float:
        return round(LEFT + self.step * (index + 0.5), 1)

    @property
    def step(self) -> float:
        return (WIDTH - LEFT - RIGHT) / max(len(self.points), 1)

    def describe(self, point: date) -> str:
        return point.strftime(self.label_format)


def coloured(series: Sequence[Series]) -> list[Series]:
    return [Series(s.name, s.values, s.colour or PALETTE[i % len(PALETTE)]) for i, s in enumerate(series)]


def number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}" if value < 1 else f"{value:.1f}"


def _nice_top(value: float) -> float:
    """The axis's top: the smallest of 1, 2, 2.5 or 5 times a power of ten that holds the value."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** floor(log10(value))
    return next(step * scale for step in (1, 2, 2.5, 5, 10) if value <= step * scale * (1 + 1e-9))


def _y(value: float, top: float) -> float:
    return round(TOP + PLOT_HEIGHT * (1 - value / top), 1)


def _frame(label: str, axis: Axis, top: float, body: SafeString) -> SafeString:
    # The axis's numbers go without their unit, which the chart's caption and each point's title say.
    gridlines = format_html_join(
        "",
        '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#e4e7ec"/>'
        '<text x="{}" y="{}" text-anchor="end" font-size="11" fill="#667085">{}</text>',
        (
            (
                LEFT,
                WIDTH - RIGHT,
                _y(top * share, top),
                _y(top * share, top),
                LEFT - 6,
                _y(top * share, top) + 4,
                number(top * share),
            )
            for share in (0, 0.5, 1)
        ),
    )
    # Labels counted back from the newest point, which is always labelled.
    every = max(1, ceil(len(axis.points) / axis.labels))
    ticks = format_html_join(
        "",
        '<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="#667085">{}</text>',
        (
            (axis.x(i), HEIGHT - 6, axis.describe(point))
            for i, point in enumerate(axis.points)
            if (len(axis.points) - 1 - i) % every == 0
        ),
    )
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">'
        "{}{}{}</svg>",
        WIDTH,
        HEIGHT,
        label,
        gridlines,
        body,
        ticks,
    )


def bars(label: str, axis: Axis, series: Sequence[Series], unit: str = "") -> SafeString:
    """One bar per point of the axis, the series stacked in it."""
    series = coloured(series)
    top = _nice_top(max((sum(s.values.get(point, 0) for s in series) for point in axis.points), default=0))
    rects = []
    for i, point in enumerate(axis.points):
        base = 0.0
        for s in series:
            if not (value := s.values.get(point, 0)):
                continue
            rects.append(
                (
                    round(axis.x(i) - axis.step * 0.35, 1),
                    _y(base + value, top),
                    round(axis.step * 0.7, 1),
                    round(PLOT_HEIGHT * value / top, 1),
                    s.colour,
                    f"{axis.describe(point)}, {s.name}: {number(value)}{unit}",
                )
            )
            base += value
    body = format_html_join("", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>', rects)
    return _frame(label, axis, top, body)


def lines(label: str, axis: Axis, series: Sequence[Series], unit: str = "", top: float | None = None) -> SafeString:
    """One line per series through its points; a point without a value leaves a gap."""
    series = coloured(series)
    top = top or _nice_top(max((v for s in series for v in s.values.values()), default=0))
    shapes: list[SafeString] = []
    for s in series:
        path, dots, previous = [], [], None
        for i, point in enumerate(axis.points):
            if (value := s.values.get(point)) is None:
                continue
            x, y = axis.x(i), _y(value, top)
            path.append(f"{'L' if previous == i - 1 else 'M'}{x},{y}")
            dots.append((x, y, s.colour, f"{axis.describe(point)}, {s.name}: {number(value)}{unit}"))
            previous = i
        shapes.append(format_html('<path d="{}" fill="none" stroke="{}" stroke-width="2"/>', " ".join(path), s.colour))
        shapes.append(
            format_html_join("", '<circle cx="{}" cy="{}" r="2.5" fill="{}"><title>{}</title></circle>', dots)
        )
    return _frame(label, axis, top, format_html_join("", "{}", ((shape,) for shape in shapes)))


def legend(series: Sequence[Series]) -> SafeString:
    return format_html(
        '<ul class="legend">{}</ul>',
        format_html_join(
            "",
            '<li><span class="swatch" style="background:{}"></span>{}</li>',
            ((s.colour, s.name) for s in coloured(series)),
        ),
    )


def health_strip(axis: Axis, healthy: dict[date, bool]) -> SafeString:
    """A thin band, green where the model server answered and red where it did not."""
    height = 18
    cells = format_html_join(
        "",
        '<rect x="{}" y="0" width="{}" height="{}" fill="{}"><title>{}: {}</title></rect>',
        (
            (
                round(axis.x(i) - axis.step / 2, 1),
                round(axis.step + 0.5, 1),
                height,
                "#12b76a" if healthy[point] else "#f04438",
                axis.describe(point),
                "up" if healthy[point] else "down",
            )
            for i, point in enumerate(axis.points)
        ),
    )
    return format_html(
        # Stretched to the charts' width below it, whatever the page's width: its cells line up with their points.
        '<svg class="strip" viewBox="0 0 {} {}" preserveAspectRatio="none" role="img"'
        ' aria-label="The model server up (green) or down (red)" xmlns="http://www.w3.org/2000/svg">{}</svg>',
        WIDTH,
        height,
        cells,
    )
