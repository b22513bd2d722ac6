"""The operator's view: for staff only, linked from the admin, its charts drawn by the site as SVG."""

import re
import time
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from chat.models import Conversation, Message
from tests.accounts import PASSWORD
from tests.ops.answers import copy_answers, store_answers

pytestmark = pytest.mark.django_db


@pytest.fixture
def used(alice, bob):
    store_answers(
        Conversation.objects.create(owner=alice),
        [{"completion_tokens": 40, "time_to_first_token": 0.2, "duration": 2.2}] * 3,
        days_ago=1,
    )
    store_answers(
        Conversation.objects.create(owner=bob),
        [{"status": Message.Status.ERROR, "error": "The model server failed (500): <boom>"}],
    )


class Svg(HTMLParser):
    """The page's SVG charts, by their labels, with the titles of what they draw."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, list[str]] = {}
        self._chart: str | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self._chart = dict(attrs)["aria-label"]
            self.charts[self._chart] = []
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None
        self._in_title = False

    def handle_data(self, data):
        if self._in_title and self._chart:
            self.charts[self._chart].append(data)


def test_the_overview_draws_use_speed_and_endings_as_inline_svg(staff_client, used):
    response = staff_client.get(reverse("ops:overview"))

    assert response.status_code == 200
    page = response.content.decode()
    svg = Svg()
    svg.feed(page)
    answers = svg.charts["Answers per day, by person"]
    assert len(answers) == 2 and any(", alice: 3" in bar for bar in answers) and any(", bob: 1" in b for b in answers)
    assert any(", alice: 120" in bar for bar in svg.charts["Tokens generated per day, by person"])
    assert any(", p50: 0.2 s" in point for point in svg.charts["Time to first token per day"])
    assert any(", p95: 20" in point for point in svg.charts["Tokens per second per day"])
    assert any(", Error: 1" in bar for bar in svg.charts["Stopped, failed and interrupted answers per day"])
    # The error's text is escaped, never markup; and the page has no script of its own.
    assert "The model server failed (500): &lt;boom&gt;" in page
    assert "<boom>" not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert 'hx-get="/ops/live"' in page


@pytest.mark.parametrize("days, shown", [("7", 7), ("90", 90), ("", 30), ("x", 30), ("-1", 30), ("9" * 30, 30)])
def test_the_period_is_one_offered_whatever_is_asked(staff_client, days, shown):
    page = staff_client.get(reverse("ops:overview"), {"days": days}).content.decode()
    assert f"The last {shown} days" in page


def test_people_who_are_not_staff_are_sent_to_sign_in_as_staff(client, alice):
    client.force_login(alice)
    for url in (reverse("ops:overview"), reverse("ops:live")):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    client.logout()
    assert client.get(reverse("ops:overview")).status_code == 302


def test_the_admin_and_the_page_link_to_it_for_staff_only(staff_client, client, alice):
    overview = reverse("ops:overview")
    assert f'href="{overview}"' in staff_client.get(reverse("chat:index")).content.decode()
    staff_client.logout()
    staff_client.force_login(type(alice).objects.create_superuser("root", password=PASSWORD))
    assert f'href="{overview}"' in staff_client.get(reverse("admin:index")).content.decode()
    client.force_login(alice)
    assert f'href="{overview}"' not in client.get(reverse("chat:index")).content.decode()


def test_the_page_takes_few_queries_and_little_time_with_100000_answers(staff_client, alice, bob, make_user):
    """100,000 answers over 30 days from 12 people: the figures stay a handful of aggregate queries."""
    people = [alice, bob, *(make_user(f"person{i}") for i in range(10))]
    per_day = 100_000 // 30
    first_day = store_answers(
        Conversation.objects.create(owner=people[0]),
        [
            {
                "completion_tokens": 50 + i % 400,
                "time_to_first_token": 0.05 + (i % 97) / 100,
                "duration": 1.0 + (i % 400) / 30,
                "status": Message.Status.ERROR if i % 50 == 0 else Message.Status.COMPLETE,
                "error": "The model server failed (500): boom" if i % 50 == 0 else "",
            }
            for i in range(100_000 - per_day * 29)
        ],
    )
    for day in range(1, 30):  # the same figures again, on each day before
        copy_answers(first_day[:per_day], Conversation.objects.create(owner=people[day % len(people)]), day)
    assert Message.objects.count() == 100_000

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = staff_client.get(reverse("ops:overview"))
        took = time.perf_counter() - started

    assert response.status_code == 200
    print(f"\nthe operator's view with 100,000 answers: {took:.2f} s, {len(queries)} queries")
    assert len(queries) <= 10
    assert "100,000 answers" in response.content.decode()
