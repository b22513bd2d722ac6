"""The operator's figures: counted by the database, by day and person, with exact percentiles."""

from math import ceil

import pytest

from chat.models import Conversation, Message
from ops import figures
from tests.ops.answers import on_day, store_answers

pytestmark = pytest.mark.django_db


def nearest_rank(values: list[float], percentile: int) -> float:
    return sorted(values)[ceil(len(values) * percentile / 100) - 1]


@pytest.fixture
def chats(alice, bob):
    return Conversation.objects.create(owner=alice), Conversation.objects.create(owner=bob)


def test_answers_and_tokens_per_day_per_person_and_in_total(chats):
    alices, bobs = chats
    store_answers(alices, [{"completion_tokens": 10}, {"completion_tokens": 20}], days_ago=0)
    store_answers(alices, [{"completion_tokens": 5}], days_ago=2)
    store_answers(bobs, [{"completion_tokens": 7}, {"completion_tokens": None}], days_ago=2)
    # Neither a prompt, an answer still streaming, nor an answer before the period is counted.
    Message.objects.create(conversation=bobs, role="user", content="hi")
    store_answers(bobs, [{"status": Message.Status.STREAMING, "completion_tokens": 99}])
    store_answers(bobs, [{"completion_tokens": 1000}], days_ago=7)

    days = figures.days_ending_today(7)
    usage = figures.usage(days)

    today, two_days_ago = days[-1], days[-3]
    assert usage.answers == {today: 2, two_days_ago: 3}
    assert usage.tokens == {today: 30, two_days_ago: 12}
    assert usage.answers_by_person == {"alice": {today: 2, two_days_ago: 1}, "bob": {two_days_ago: 2}}
    assert usage.tokens_by_person == {"alice": {today: 30, two_days_ago: 5}, "bob": {two_days_ago: 7}}
    assert usage.people == [figures.Person("alice", 3, 35), figures.Person("bob", 2, 7)]


def test_people_beyond_those_drawn_are_drawn_together(make_user):
    for i in range(figures.PEOPLE_DRAWN + 2):
        person = make_user(f"person{i:02}")
        store_answers(Conversation.objects.create(owner=person), [{"completion_tokens": 1}] * (20 - i))

    usage = figures.usage(figures.days_ending_today(1))

    assert len(usage.people) == figures.PEOPLE_DRAWN + 2
    assert len(usage.answers_by_person) == figures.PEOPLE_DRAWN + 1
    today = figures.days_ending_today(1)[0]
    # The two with the fewest answers (12 and 11) make the others.
    assert usage.answers_by_person[figures.OTHERS] == {today: 23}
    assert "person00" in usage.answers_by_person


def test_p50_and_p95_per_day_are_the_nearest_rank_percentiles(chats):
    alices, _ = chats
    # Days of different sizes, including one answer alone, with shuffled values and a tie.
    samples = {
        0: [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0, 0.5] * 3,
        1: [2.5],
        3: [float(v) for v in range(40, 0, -1)],
    }
    for days_ago, ttfts in samples.items():
        store_answers(
            alices,
            [{"time_to_first_token": t, "duration": t + 2.0, "completion_tokens": int(t * 10) + 1} for t in ttfts],
            days_ago,
        )
    # Unmeasured answers are left out, not counted as zero.
    store_answers(alices, [{"time_to_first_token": None, "duration": None, "completion_tokens": 5}], 0)
    days = figures.days_ending_today(5)

    first_token = figures.percentiles_per_day(days, figures.TIME_TO_FIRST_TOKEN)
    speed = figures.percentiles_per_day(days, figures.TOKENS_PER_SECOND)

    for days_ago, ttfts in samples.items():
        day = days[-1 - days_ago]
        speeds = [(int(t * 10) + 1) / 2.0 for t in ttfts]
        for p in (50, 95):
            assert first_token.by_percentile[p][day] == pytest.approx(nearest_rank(ttfts, p))
            assert speed.by_percentile[p][day] == pytest.approx(nearest_rank(speeds, p))
    assert set(first_token.by_percentile[50]) == {days[-1], days[-2], days[-4]}


def test_stops_errors_and_interruptions_by_day_and_the_most_frequent_errors(chats):
    alices, bobs = chats
    refused = "The model server refused the request (400): no"
    store_answers(alices, [{"status": Message.Status.ERROR, "error": refused}] * 3, days_ago=1)
    store_answers(bobs, [{"status": Message.Status.ERROR, "error": "lost"}], days_ago=1)
    store_answers(bobs, [{"status": Message.Status.STOPPED}] * 2 + [{"status": Message.Status.INTERRUPTED}])
    store_answers(bobs, [{"status": Message.Status.COMPLETE}] * 5)

    days = figures.days_ending_today(3)
    endings = figures.endings(days)

    assert endings.by_status == {"stopped": {days[-1]: 2}, "error": {days[-2]: 4}, "interrupted": {days[-1]: 1}}
    assert endings.totals == {"stopped": 2, "error": 4, "interrupted": 1}
    assert endings.errors == [figures.ErrorKind(refused, 3), figures.ErrorKind("lost", 1)]


def test_days_end_today_in_the_sites_time_zone(settings):
    days = figures.days_ending_today(30)
    assert len(days) == 30
    assert days[-1] == on_day(0).date()
    assert (days[-1] - days[0]).days == 29
