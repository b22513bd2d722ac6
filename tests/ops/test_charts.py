"""The operator's charts: SVG that scales to its figures, escapes what it names, and leaves gaps."""

import re
from datetime import date, timedelta

from ops import charts
from ops.charts import Axis, Series

DAYS = [date(2026, 11, 1) + timedelta(days=i) for i in range(5)]


def test_stacked_bars_reach_their_days_total_on_a_rounded_scale():
    svg = charts.bars(
        "Answers", Axis(DAYS), [Series("alice", {DAYS[0]: 30, DAYS[4]: 10}), Series("bob", {DAYS[0]: 12})]
    )
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    # 42 on a scale to 50: the day's two bars fill 42/50 of the plot's height between them.
    assert sum(heights[:2]) == round(charts.PLOT_HEIGHT * 42 / 50, 1)
    assert len(heights) == 3
    assert ">50</text>" in svg
    assert "<title>Nov 1, bob: 12</title>" in svg


def test_what_a_chart_names_is_escaped():
    svg = charts.bars('<b onclick="x">', Axis(DAYS), [Series("<script>alert(1)</script>", {DAYS[1]: 1})])
    legend = charts.legend([Series("<img src=x>", {})])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'aria-label="&lt;b onclick=&quot;x&quot;&gt;"' in svg
    assert "<img" not in legend and "&lt;img src=x&gt;" in legend


def test_a_line_breaks_where_a_day_has_no_value():
    svg = charts.lines("Speed", Axis(DAYS), [Series("p50", {DAYS[0]: 1.0, DAYS[1]: 2.0, DAYS[3]: 1.5})], " s")
    path = re.search(r'<path d="([^"]+)"', svg)
    assert path is not None
    moves = re.findall(r"[ML]", path[1])
    assert moves == ["M", "L", "M"]  # days 1-2 joined, day 4 apart
    assert svg.count("<circle") == 3
    assert "<title>Nov 4, p50: 1.5 s</title>" in svg


def test_an_empty_chart_is_drawn_with_a_scale_of_one():
    svg = charts.lines("Nothing", Axis(DAYS), [Series("p50", {})])
    assert ">1</text>" in svg and "<circle" not in svg


def test_the_health_strip_is_green_where_the_server_answered():
    moments = DAYS[:3]
    strip = charts.health_strip(Axis(moments), {moments[0]: True, moments[1]: False, moments[2]: True})
    assert re.findall(r'fill="(#\w+)"', strip) == ["#12b76a", "#f04438", "#12b76a"]
