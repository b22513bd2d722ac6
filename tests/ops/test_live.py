"""The model server live, on the operator's view: its load from /metrics and its recent health."""

from datetime import timedelta

import httpx
import pytest
from django.urls import reverse
from django.utils import timezone

from ops.models import ServerReading
from ops.readings import HEALTH_NOTE_INTERVAL, KEPT

pytestmark = pytest.mark.django_db


def generate(fake_vllm, tokens: int) -> None:
    """An answer of `tokens` tokens straight from the fake, which its counter counts."""
    fake_vllm.reply = ["x"] * tokens
    body = {"model": "qwen2-7b-instruct", "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(f"{fake_vllm.base_url}/chat/completions", json=body, timeout=10).raise_for_status()


def test_the_load_now_is_shown_and_kept_as_a_reading(staff_client, fake_vllm):
    fake_vllm.waiting, fake_vllm.kv_cache_usage = 3, 0.425

    page = staff_client.get(reverse("ops:live")).content.decode()

    assert "<dt>Health</dt><dd>up</dd>" in page
    assert "<dt>Waiting</dt><dd>3</dd>" in page
    assert "<dt>Running</dt><dd>0</dd>" in page
    assert "<dt>KV cache</dt><dd>42.5%</dd>" in page
    reading = ServerReading.objects.get()
    assert reading.healthy and reading.waiting == 3 and reading.kv_cache_usage == 0.425
    assert reading.generation_tokens == fake_vllm.generated_tokens
    for label in ("Requests running and waiting", "KV-cache use", "Generation throughput"):
        assert f'aria-label="{label}"' in page


def test_throughput_is_the_token_counters_rise_since_the_reading_before(staff_client, fake_vllm):
    before = ServerReading.objects.create(
        taken_at=timezone.now() - timedelta(seconds=10), healthy=True, generation_tokens=fake_vllm.generated_tokens
    )
    generate(fake_vllm, 50)

    page = staff_client.get(reverse("ops:live")).content.decode()

    newest = ServerReading.objects.latest("taken_at")
    # 50 tokens over the time between the two readings: about 10 s, more on a busy machine.
    elapsed = (newest.taken_at - before.taken_at).total_seconds()
    assert newest.generation_throughput == pytest.approx(50 / elapsed, rel=0.01)
    assert f"{newest.generation_throughput:.1f} tok/s" in page


@pytest.mark.parametrize(
    "gap, counter_change",
    [(timedelta(minutes=10), 50), (timedelta(seconds=10), -1)],
    ids=["too long since the reading before", "vLLM restarted"],
)
def test_no_throughput_across_a_long_gap_or_a_restart(staff_client, fake_vllm, gap, counter_change):
    generate(fake_vllm, 1)
    before = fake_vllm.generated_tokens - counter_change if counter_change > 0 else fake_vllm.generated_tokens + 100
    ServerReading.objects.create(taken_at=timezone.now() - gap, healthy=True, generation_tokens=before)

    page = staff_client.get(reverse("ops:live")).content.decode()

    assert ServerReading.objects.latest("taken_at").generation_throughput is None
    assert "<dt>Throughput</dt><dd>\N{EN DASH}</dd>" in page


def test_many_operators_ask_vllm_at_most_every_few_seconds(staff_client, fake_vllm):
    staff_client.get(reverse("ops:live"))
    fake_vllm.waiting = 7
    page = staff_client.get(reverse("ops:live")).content.decode()
    assert ServerReading.objects.count() == 1
    assert "<dt>Waiting</dt><dd>0</dd>" in page  # the reading of a moment ago


def test_a_server_that_is_down_is_shown_down_and_its_health_kept(staff_client, fake_vllm):
    ServerReading.objects.create(taken_at=timezone.now() - timedelta(seconds=30), healthy=True)
    fake_vllm.fault = "refuse"

    response = staff_client.get(reverse("ops:live"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "<dt>Health</dt><dd>down</dd>" in page
    assert "not reachable" in page
    assert "Up in 50% of the 2 readings" in page
    # The strip: one green cell for the reading before, one red for this one.
    assert page.count('fill="#12b76a"><title>') == 1 and page.count('fill="#f04438"><title>') == 1


def test_readings_older_than_a_day_are_deleted(staff_client, fake_vllm):
    ServerReading.objects.create(taken_at=timezone.now() - KEPT - timedelta(minutes=1), healthy=True)
    kept = ServerReading.objects.create(taken_at=timezone.now() - KEPT + timedelta(minutes=5), healthy=True)

    staff_client.get(reverse("ops:live"))

    assert set(ServerReading.objects.all()) == {kept, ServerReading.objects.latest("taken_at")}


def test_healthz_notes_the_servers_health_at_most_once_a_minute(client, fake_vllm):
    assert client.get(reverse("chat:healthz")).status_code == 200
    fake_vllm.fault = "refuse"
    assert client.get(reverse("chat:healthz")).status_code == 503
    noted = ServerReading.objects.get()
    assert noted.healthy and noted.running is None  # health only, no load

    ServerReading.objects.update(taken_at=timezone.now() - HEALTH_NOTE_INTERVAL - timedelta(seconds=1))
    client.get(reverse("chat:healthz"))

    latest = ServerReading.objects.latest("taken_at")
    assert ServerReading.objects.count() == 2
    assert not latest.healthy and "not reachable" in latest.detail


def test_the_operators_view_reads_the_load_even_just_after_a_health_note(staff_client, fake_vllm):
    staff_client.get(reverse("chat:healthz"))
    fake_vllm.waiting = 4

    page = staff_client.get(reverse("ops:live")).content.decode()

    assert "<dt>Waiting</dt><dd>4</dd>" in page
    assert ServerReading.objects.count() == 2
