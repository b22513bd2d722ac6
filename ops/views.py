"""The operator's view: how the chat is used and how the model server is doing, for staff only."""

from datetime import date, timedelta

from asgiref.sync import sync_to_async
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from chat.models import Message
from engine import catalog
from ops import charts, figures
from ops.charts import Axis, Series
from ops.models import ServerReading
from ops.readings import take_reading

PERIODS = (7, 30, 90)  # days the page offers
DEFAULT_PERIOD = 30
LIVE_WINDOW = timedelta(hours=1)  # what the live charts show of the readings
ENGINES_WINDOW = timedelta(hours=24)  # the answers each model's time to first token is the median of


def _period(request: HttpRequest) -> int:
    # Only the periods offered: any other value reads as the default, never as an error.
    asked = request.GET.get("days", "")
    return int(asked) if asked in {str(days) for days in PERIODS} else DEFAULT_PERIOD


@staff_member_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    days = figures.days_ending_today(_period(request))
    axis = Axis(days)
    usage = figures.usage(days)
    people = [Series(name, dict(values)) for name, values in _people_first(usage.answers_by_person, usage)]
    people_tokens = [Series(name, dict(values)) for name, values in _people_first(usage.tokens_by_person, usage)]
    first_token = figures.percentiles_per_day(days, figures.TIME_TO_FIRST_TOKEN)
    speed = figures.percentiles_per_day(days, figures.TOKENS_PER_SECOND)
    endings = figures.endings(days)
    ending_series = [
        Series(str(Message.Status(status).label), dict(per_day), colour)
        for (status, per_day), colour in zip(endings.by_status.items(), ("#f79009", "#f04438", "#7a5af8"), strict=True)
    ]

    def percentiles(speed: figures.Speed) -> list[Series]:
        return [
            Series(f"p{p}", dict(speed.by_percentile[p]), colour)
            for p, colour in zip(figures.PERCENTILES, ("#2563eb", "#f04438"), strict=True)
        ]

    context = {
        "period": len(days),
        "periods": PERIODS,
        "usage": usage,
        "total_answers": sum(usage.answers.values()),
        "total_tokens": sum(usage.tokens.values()),
        "answers_chart": charts.bars("Answers per day, by person", axis, people),
        "tokens_chart": charts.bars("Tokens generated per day, by person", axis, people_tokens),
        "people_legend": charts.legend(people),
        "first_token_chart": charts.lines("Time to first token per day", axis, percentiles(first_token), " s"),
        "speed_chart": charts.lines("Tokens per second per day", axis, percentiles(speed)),
        "percentile_legend": charts.legend(percentiles(speed)),
        "endings": endings,
        "endings_chart": charts.bars("Stopped, failed and interrupted answers per day", axis, ending_series),
        "endings_legend": charts.legend(ending_series),
    }
    return render(request, "ops/overview.html", context)


def _people_first(by_person: dict[str, dict[date, int]], usage: figures.Usage) -> list[tuple[str, dict[date, int]]]:
    """The series in the order of the people table (most answers first), the others last."""
    order = {person.username: i for i, person in enumerate(usage.people)}
    return sorted(by_person.items(), key=lambda item: order.get(item[0], len(order)))


@staff_member_required
@require_GET
async def live(request: HttpRequest) -> HttpResponse:
    """The model server now and over the last hour: the page asks for this every few seconds."""
    reading = await take_reading()
    states = await catalog.engines()
    first_token = await sync_to_async(figures.first_token_median_by_model)(timezone.now() - ENGINES_WINDOW)
    readings = [r async for r in ServerReading.objects.recent(int(LIVE_WINDOW.total_seconds()))]
    moments = [timezone.localtime(r.taken_at) for r in readings]  # drawn in the site's time zone
    axis = Axis(moments, label_format="%H:%M:%S")

    def series(name: str, field: str, scale: float = 1.0) -> Series:
        values = ((moment, getattr(r, field)) for moment, r in zip(moments, readings, strict=True))
        return Series(name, {moment: value * scale for moment, value in values if value is not None})

    load = [series("running", "running"), series("waiting", "waiting")]
    engines = [
        {
            "name": state.endpoint.name,
            "address": state.endpoint.shown_url,  # never the key, nor a password in the URL
            "up": state.up,
            "detail": state.detail,
            "models": [model.id for model in state.models],
            "in_flight": state.in_flight,
            "first_token": [(model.id, first_token[model.id]) for model in state.models if model.id in first_token],
        }
        for state in states
    ]
    context = {
        "reading": reading,
        "engines": engines,
        "kv_cache_percent": None if reading.kv_cache_usage is None else reading.kv_cache_usage * 100,
        "healthy_share": sum(r.healthy for r in readings) / len(readings) if readings else None,
        "readings": readings,
        "load_chart": charts.lines("Requests running and waiting", axis, load),
        "load_legend": charts.legend(load),
        "kv_chart": charts.lines("KV-cache use", axis, [series("KV cache", "kv_cache_usage", 100)], "%", top=100),
        "throughput_chart": charts.lines(
            "Generation throughput", axis, [series("tokens/s", "generation_throughput")], " tok/s"
        ),
        "health_strip": charts.health_strip(axis, {m: r.healthy for m, r in zip(moments, readings, strict=True)}),
    }
    return render(request, "ops/live.html", context)
