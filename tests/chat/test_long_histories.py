"""Long histories: a conversation of a thousand messages opens on its newest page and loads the
earlier ones as the reader scrolls up; a sidebar of hundreds of conversations pages as it scrolls.

The data is written straight to the database (tests/histories.py); the pages are read through
Django's test client, and, for scrolling, in Chromium against the site in daphne.
"""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from chat import branches, sidebar
from chat.models import Conversation, Message
from tests.browser import answers, prompt_box
from tests.histories import fork, long_conversation, many_conversations, text_of

ARTICLE = re.compile(r'<article class="message (user|assistant) [a-z]+" id="message-([0-9]+)"')
OLDER = re.compile(r'<p class="older" data-older-url="([^"]+)"')
SIDEBAR_ITEM = re.compile(r'<li id="conversation-([0-9]+)"')
MORE = re.compile(r'<li class="more" hx-get="([^"]+)"')


def shown_ids(html: str) -> list[int]:
    return [int(pk) for _, pk in ARTICLE.findall(html)]


def older_url(html: str) -> str | None:
    found = OLDER.search(html)
    return found[1].replace("&amp;", "&") if found else None


def branch_ids(conversation: Conversation) -> list[int]:
    return [message.pk for message, _ in branches.shown_branch(conversation)]


def read_back_to_the_start(client: Client, html: str) -> list[int]:
    """Every message the page and its older pages show, oldest first, as the reader scrolling up gets them."""
    pages = [shown_ids(html)]
    while url := older_url(html):
        response = client.get(url, headers={"HX-Request": "true"})
        assert response.status_code == 200
        html = response.content.decode()
        pages.insert(0, shown_ids(html))
        assert 0 < len(pages[0]) <= branches.PAGE
    return [pk for page in pages for pk in page]


@pytest.mark.django_db
class TestTheThread:
    def test_a_long_conversation_opens_on_its_newest_page(self, client, alice):
        conversation = long_conversation(alice, 1000)
        client.force_login(alice)
        html = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
        ids = branch_ids(conversation)
        assert shown_ids(html) == ids[-branches.PAGE :]
        assert older_url(html) == f"/c/{conversation.pk}/older?before={ids[-branches.PAGE]}"
        # The next prompt still follows the last message.
        assert f'id="branch-tip" name="parent" form="prompt-form" value="{ids[-1]}"' in html

    def test_a_short_conversation_has_nothing_to_load(self, client, alice):
        conversation = long_conversation(alice, branches.PAGE)
        client.force_login(alice)
        html = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
        assert shown_ids(html) == branch_ids(conversation)
        assert older_url(html) is None

    def test_older_pages_give_the_whole_branch_in_order_once(self, client, alice):
        conversation = long_conversation(alice, 1000)
        client.force_login(alice)
        html = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
        assert read_back_to_the_start(client, html) == branch_ids(conversation)

    def test_an_older_page_renders_messages_as_the_page_does(self, client, alice):
        conversation = long_conversation(alice, 100)
        first_prompt, first_answer = conversation.messages.order_by("pk")[:2]
        client.force_login(alice)
        response = client.get(reverse("chat:older", args=[conversation.pk]), {"before": first_answer.pk + 1})
        html = response.content.decode()
        assert shown_ids(html) == [first_prompt.pk, first_answer.pk]
        assert older_url(html) is None
        # The same partial: the answer's text for render.js, its footer (Regenerate), the prompt's Edit.
        assert "Answer 1, with **markdown** and `code`." in html
        assert f'hx-post="/c/{conversation.pk}/m/{first_answer.pk}/regenerate"' in html
        assert f'hx-post="/c/{conversation.pk}/m/{first_prompt.pk}/edit"' in html

    def test_the_branch_shown_is_the_one_paged(self, client, alice):
        conversation = long_conversation(alice, 200)
        main = list(conversation.messages.order_by("pk"))
        # Another version of answer 101, with a branch of 60 messages below it; that branch shown.
        forked = fork(conversation, main[101], 60)
        Conversation.objects.filter(pk=conversation.pk).update(branch_tip=forked[-1])
        client.force_login(alice)
        html = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
        shown = read_back_to_the_start(client, html)
        assert shown == [m.pk for m in main[:101]] + [m.pk for m in forked]
        # The fork's first message shows its versions (2 / 2), whichever page it came on.
        fork_page = client.get(reverse("chat:older", args=[conversation.pk]), {"before": forked[1].pk}).content
        assert b'<span class="position">2 / 2</span>' in fork_page

    def test_the_page_before_a_message_is_the_same_whichever_branch_is_shown(self, client, alice):
        # Asked for after another tab switched the branch: the messages above it do not change.
        conversation = long_conversation(alice, 100)
        main = list(conversation.messages.order_by("pk"))
        forked = fork(conversation, main[61], 4)
        client.force_login(alice)
        url = reverse("chat:older", args=[conversation.pk])
        before = client.get(url, {"before": main[80].pk}).content
        Conversation.objects.filter(pk=conversation.pk).update(branch_tip=forked[-1])
        assert client.get(url, {"before": main[80].pk}).content == before
        assert shown_ids(before.decode()) == [m.pk for m in main[50:80]]

    def test_a_search_result_older_than_the_first_page_is_on_the_page(self, client, alice):
        conversation = long_conversation(alice, 1000)
        ids = branch_ids(conversation)
        client.force_login(alice)
        url = reverse("chat:conversation", args=[conversation.pk])
        html = client.get(url, {"message": ids[10]}).content.decode()
        # From the message found down to the end, so the next prompt still follows the branch's last.
        assert shown_ids(html) == ids[10:]
        assert older_url(html) == f"/c/{conversation.pk}/older?before={ids[10]}"
        assert read_back_to_the_start(client, html) == ids

    def test_a_search_result_on_another_branch_pages_that_branch(self, client, alice):
        conversation = long_conversation(alice, 300)
        main = list(conversation.messages.order_by("pk"))
        forked = fork(conversation, main[21], 40)
        client.force_login(alice)
        url = reverse("chat:conversation", args=[conversation.pk])
        html = client.get(url, {"message": forked[5].pk}).content.decode()
        assert shown_ids(html) == [m.pk for m in forked[5:]]
        assert read_back_to_the_start(client, html) == [m.pk for m in main[:21] + forked]

    def test_stepping_to_an_old_version_shows_the_branch_from_there(self, client, alice):
        conversation = long_conversation(alice, 200)
        main = list(conversation.messages.order_by("pk"))
        forked = fork(conversation, main[41], 2)
        client.force_login(alice)
        response = client.post(
            reverse("chat:show", args=[conversation.pk, forked[0].pk]), headers={"HX-Request": "true"}
        )
        html = response.content.decode()
        # hx-swap's show:#message-… scrolls to it: it must be on the page, here the branch's newest page.
        branch = [m.pk for m in main[:41] + forked]
        assert shown_ids(html) == branch[-branches.PAGE :]
        assert older_url(html) == f"/c/{conversation.pk}/older?before={branch[-branches.PAGE]}"

    def test_stepping_to_a_version_far_up_shows_the_branch_from_there(self, client, alice):
        conversation = long_conversation(alice, 200)
        main = list(conversation.messages.order_by("pk"))
        forked = fork(conversation, main[41], 2)
        # The fork's own branch is long: its first message is above its newest page.
        for n in range(60):
            forked.append(
                Message.objects.create(conversation=conversation, parent=forked[-1], role="user", content=f"{n}")
            )
        client.force_login(alice)
        response = client.post(
            reverse("chat:show", args=[conversation.pk, forked[0].pk]), headers={"HX-Request": "true"}
        )
        html = response.content.decode()
        assert shown_ids(html) == [m.pk for m in forked]
        assert older_url(html) == f"/c/{conversation.pk}/older?before={forked[0].pk}"

    @pytest.mark.parametrize(
        "before",
        [None, "", "abc", "0", "-1", "1.5", " 1", "\uff11\uff12", "99999999999999999999", "9223372036854775808"],
    )
    def test_a_bad_before_is_a_400(self, client, alice, before):
        conversation = long_conversation(alice, 40)
        client.force_login(alice)
        query = {} if before is None else {"before": before}
        response = client.get(reverse("chat:older", args=[conversation.pk]), query)
        assert response.status_code == 400
        assert "error" in response.json()

    def test_a_message_of_another_conversation_is_a_404(self, client, alice):
        mine, other = long_conversation(alice, 40), long_conversation(alice, 40)
        client.force_login(alice)
        response = client.get(reverse("chat:older", args=[mine.pk]), {"before": other.branch_tip_id})
        assert response.status_code == 404
        response = client.get(reverse("chat:older", args=[mine.pk]), {"before": 9_000_000})
        assert response.status_code == 404

    def test_another_persons_conversation_is_a_404(self, client, alice, bob):
        alices = long_conversation(alice, 40)
        bobs = long_conversation(bob, 40)
        client.force_login(bob)
        inside = alices.branch_tip_id
        assert client.get(reverse("chat:older", args=[alices.pk]), {"before": inside}).status_code == 404
        # Nor through his own conversation's URL.
        assert client.get(reverse("chat:older", args=[bobs.pk]), {"before": inside}).status_code == 404

    def test_signed_out_is_sent_to_sign_in(self, client, alice):
        conversation = long_conversation(alice, 40)
        response = client.get(reverse("chat:older", args=[conversation.pk]), {"before": 1})
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]

    @pytest.mark.parametrize("url", ["chat:conversation", "chat:older"])
    def test_the_queries_do_not_grow_with_the_conversation(self, client, alice, url):
        client.force_login(alice)
        counts = []
        for length in (100, 1000):
            conversation = long_conversation(alice, length)
            query = {"before": conversation.branch_tip_id} if url == "chat:older" else {}
            with CaptureQueriesContext(connection) as queries:
                response = client.get(reverse(url, args=[conversation.pk]), query)
            assert response.status_code == 200
            assert len(shown_ids(response.content.decode())) == branches.PAGE
            counts.append(len(queries))
        assert counts[0] == counts[1]


@pytest.mark.django_db
class TestTheSidebar:
    def test_it_lists_a_page_and_then_the_rest_in_order_once(self, client, alice, bob):
        made = many_conversations(alice, 300)
        many_conversations(bob, 60)  # never listed for Alice
        client.force_login(alice)
        html = client.get(reverse("chat:index")).content.decode()
        listed = [int(pk) for pk in SIDEBAR_ITEM.findall(html)]
        assert len(listed) == sidebar.PAGE
        while more := MORE.search(html):
            html = client.get(more[1], headers={"HX-Request": "true"}).content.decode()
            page = [int(pk) for pk in SIDEBAR_ITEM.findall(html)]
            assert 0 < len(page) <= sidebar.PAGE
            listed += page
        # Newest first (the ties by id), as the whole list would be.
        assert listed == [c.pk for c in reversed(made)]
        assert listed == list(Conversation.objects.filter(owner=alice).newest_first().values_list("pk", flat=True))

    def test_a_conversation_that_moves_up_meanwhile_is_not_listed_twice(self, client, alice):
        made = many_conversations(alice, 120)
        client.force_login(alice)
        html = client.get(reverse("chat:index")).content.decode()
        first = [int(pk) for pk in SIDEBAR_ITEM.findall(html)]
        # A prompt sent to one further down (in another tab): it is now the newest, on the first page.
        made[10].save()
        rest = []
        while more := MORE.search(html):
            html = client.get(more[1]).content.decode()
            rest += [int(pk) for pk in SIDEBAR_ITEM.findall(html)]
        assert made[10].pk not in rest
        # Not on the pages below either: it is at the top the next time the list is swapped in.
        assert len(set(first + rest)) == len(first + rest) == 119

    def test_the_list_after_a_send_is_its_first_page(self, client, alice):
        # The page swaps it in out of band after a send or a switch of versions: the first page and
        # the line that loads the next, never the pages the reader had scrolled through, twice.
        many_conversations(alice, 120)
        conversation = long_conversation(alice, 4)
        client.force_login(alice)
        answer = conversation.messages.order_by("pk")[1]
        response = client.post(reverse("chat:show", args=[conversation.pk, answer.pk]), headers={"HX-Request": "true"})
        html = response.content.decode()
        assert '<ul id="conversations" hx-swap-oob="true">' in html
        listed = [int(pk) for pk in SIDEBAR_ITEM.findall(html)]
        assert len(listed) == sidebar.PAGE and listed[0] == conversation.pk
        assert MORE.search(html)

    @pytest.mark.parametrize(
        "after",
        [None, "", "x", "1-", "-1", "1-0", "1-1-1", "1_1", "\uff11-1", "123456789012345678-1", "1-" + "9" * 19],
    )
    def test_a_bad_place_is_a_400(self, client, alice, after):
        client.force_login(alice)
        query = {} if after is None else {"after": after}
        response = client.get(reverse("chat:conversation-list"), query)
        assert response.status_code == 400

    def test_another_persons_place_lists_only_ones_own(self, client, alice, bob):
        alices = many_conversations(alice, 10)
        bobs = many_conversations(bob, 10)
        client.force_login(bob)
        html = client.get(reverse("chat:conversation-list"), {"after": sidebar.place_after(alices[-1])}).content
        listed = [int(pk) for pk in SIDEBAR_ITEM.findall(html.decode())]
        assert listed and set(listed) <= {c.pk for c in bobs}

    def test_signed_out_is_sent_to_sign_in(self, client):
        response = client.get(reverse("chat:conversation-list"), {"after": "1-1"})
        assert response.status_code == 302

    def test_the_open_conversation_is_marked_on_a_later_page(self, client, alice):
        made = many_conversations(alice, 60)
        client.force_login(alice)
        oldest = made[0]
        response = client.get(
            reverse("chat:conversation-list"),
            {"after": sidebar.place_after(made[20])},
            headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver/c/{oldest.pk}/"},
        )
        assert f'<li id="conversation-{oldest.pk}" class="current" aria-current="true"' in response.content.decode()


# In Chromium, against the site in daphne.

THREAD_TOP = """() => {
  const thread = document.getElementById("thread");
  thread.scrollTop = 0;
  const first = thread.querySelector("article");
  return [first.id, first.getBoundingClientRect().top];
}"""


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_scrolling_up_a_thousand_messages_to_the_first(signed_in: Page, live_site, alice):
    page = signed_in
    conversation = long_conversation(alice, 1000)
    page.goto(f"/c/{conversation.pk}/")
    newest = page.locator("#thread article").last
    expect(newest).to_contain_text(text_of(999).replace("**", "").replace("`", ""))
    expect(newest).to_be_in_viewport()
    first_message = page.locator("#thread article .body").get_by_text(text_of(0), exact=True)
    rounds = 0
    while not first_message.count():
        rounds += 1
        assert rounds < 100
        # Scrolled to the top: what is there stays where it is on screen as the earlier page comes in.
        top_id, top = page.evaluate(THREAD_TOP)
        expect(page.locator("#thread article").first).not_to_have_id(top_id)
        assert abs(page.locator(f"#{top_id}").evaluate("e => e.getBoundingClientRect().top") - top) <= 1
    assert rounds >= 10  # a page at a time, not all at once
    expect(first_message).to_be_visible()
    articles = page.locator("#thread article")
    expect(articles).to_have_count(1000)
    ids = page.eval_on_selector_all("#thread article", "all => all.map(a => Number(a.id.slice(8)))")
    assert ids == branch_ids(conversation)
    # Earlier answers are rendered (markdown) and their buttons work as the first page's do.
    expect(page.locator("#thread article.assistant").first.locator(".body strong")).to_have_text("markdown")
    expect(page.locator("#thread p.older")).to_have_count(0)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_earlier_pages_version_buttons_work(signed_in: Page, live_site, alice):
    page = signed_in
    conversation = long_conversation(alice, 200)
    main = list(conversation.messages.order_by("pk"))
    forked = fork(conversation, main[41], 2)
    page.goto(f"/c/{conversation.pk}/")
    versioned = page.locator(f"#message-{main[41].pk}")
    for _ in range(20):
        if versioned.count():
            break
        top_id, _ = page.evaluate(THREAD_TOP)
        expect(page.locator("#thread article").first).not_to_have_id(top_id)
    versioned.get_by_role("button", name="Next version").click()
    # The thread now shows the other branch, at the version stepped to.
    shown = page.locator(f"#message-{forked[0].pk}")
    expect(shown).to_contain_text("Fork 0")
    expect(shown).to_be_in_viewport()
    expect(shown.locator(".versions .position")).to_have_text("2 / 2")
    expect(page.locator("#thread article").last).to_contain_text("Fork 1")
    assert Conversation.objects.get(pk=conversation.pk).branch_tip_id == forked[-1].pk


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_search_result_far_up_opens_at_the_message(signed_in: Page, live_site, alice):
    page = signed_in
    conversation = long_conversation(alice, 1000)
    found = branch_ids(conversation)[20]
    page.goto(f"/c/{conversation.pk}/?message={found}#message-{found}")
    expect(page.locator(f"#message-{found}")).to_be_in_viewport()
    # The page above it comes in, and the message stays in view.
    expect(page.locator("#thread article").first).to_contain_text(text_of(0))
    expect(page.locator(f"#message-{found}")).to_be_in_viewport()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_sidebar_loads_more_as_it_scrolls(signed_in: Page, live_site, alice):
    page = signed_in
    made = many_conversations(alice, 300)
    page.goto("/")
    items = page.locator("#conversations li:not(.more)")
    expect(items).to_have_count(sidebar.PAGE)
    oldest = page.locator("#conversations li > a").get_by_text("Chat 0", exact=True)
    rounds = 0
    while not oldest.count():
        rounds += 1
        assert rounds < 20
        shown = items.count()
        page.locator("#conversations").evaluate("list => { list.scrollTop = list.scrollHeight; }")
        expect(items).not_to_have_count(shown)
    assert rounds >= 5
    expect(items).to_have_count(300)
    titles = page.eval_on_selector_all("#conversations li > a", "all => all.map(a => a.textContent)")
    assert titles == [c.title for c in reversed(made)]
    expect(page.locator("#conversations li.more")).to_have_count(0)


def scroll_the_sidebar_to_its_end(page: Page) -> None:
    items = page.locator("#conversations li:not(.more)")
    for _ in range(20):
        if not page.locator("#conversations li.more").count():
            return
        shown = items.count()
        page.locator("#conversations").evaluate("list => { list.scrollTop = list.scrollHeight; }")
        expect(items).not_to_have_count(shown)
    raise AssertionError("the list kept growing")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_after_a_send_the_sidebar_is_its_first_page_again(signed_in: Page, live_site, fake_vllm, alice):
    page = signed_in
    made = many_conversations(alice, 120)
    # The oldest conversation, with a turn in it already (so the model is not asked to name it).
    old = long_conversation(alice, 2, title="The old one")
    Conversation.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=30))
    page.goto(f"/c/{old.pk}/")
    items = page.locator("#conversations li:not(.more)")
    scroll_the_sidebar_to_its_end(page)
    expect(items).to_have_count(121)
    expect(items.last).to_have_class("current")

    fake_vllm.reply = ["Fine."]
    prompt_box(page).fill("Still there?")
    prompt_box(page).press("Enter")
    expect(answers(page).last.locator(".body")).to_have_text("Fine.")
    # The list swapped in after the send: its first page, this conversation first, nothing twice.
    expect(items).to_have_count(sidebar.PAGE)
    expect(items.first).to_have_id(f"conversation-{old.pk}")
    expect(items.first).to_have_class("current")
    scroll_the_sidebar_to_its_end(page)
    titles = page.eval_on_selector_all("#conversations li > a", "all => all.map(a => a.textContent)")
    assert titles == ["The old one"] + [c.title for c in reversed(made)]
