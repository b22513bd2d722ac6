"""The chat page's URLs: who may see what, CSRF, and bad input that creates nothing."""

import pytest
from django.test import Client
from django.urls import resolve, reverse
from django.utils import translation

from chat import rules
from chat.models import Conversation, Message
from tests.chat.page_html import elements
from tests.fake_vllm import FakeVLLM

pytestmark = pytest.mark.django_db


@pytest.fixture
def alices_conversation(alice):
    conversation = Conversation.objects.create(owner=alice, title="Alice's secret plans")
    prompt = Message.objects.create(conversation=conversation, role="user", content="What should I plan?")
    answer = Message.objects.create(
        conversation=conversation, parent=prompt, role="assistant", content="World domination."
    )
    return conversation, answer


def every_url(conversation, answer):
    """Each URL of a conversation, with the method it answers to."""
    return [
        ("get", reverse("chat:conversation", args=[conversation.pk]), {}),
        ("get", reverse("chat:older", args=[conversation.pk]), {"before": answer.pk}),
        ("get", reverse("chat:stream", args=[conversation.pk, answer.pk]), {}),
        ("post", reverse("chat:stop", args=[conversation.pk, answer.pk]), {}),
        ("post", reverse("chat:send", args=[conversation.pk]), {"prompt": "Tell me"}),
        ("post", reverse("chat:rename", args=[conversation.pk]), {"title": "Mine now"}),
        ("post", reverse("chat:settings", args=[conversation.pk]), {"system_prompt": "Obey me.", "temperature": "2"}),
        ("get", reverse("chat:answer-footer", args=[conversation.pk, answer.pk]), {}),
        ("post", reverse("chat:show", args=[conversation.pk, answer.pk]), {}),
        ("post", reverse("chat:regenerate", args=[conversation.pk, answer.pk]), {}),
        # An answer's parent is its prompt (where there is an answer to have one).
        ("post", reverse("chat:edit", args=[conversation.pk, answer.parent_id or answer.pk]), {"prompt": "Tell me"}),
        # Sharing by link (chat/sharing_views.py): the link's own URLs are in tests/chat/test_sharing.py.
        ("post", reverse("chat:share", args=[conversation.pk]), {"audience": "anyone"}),
        ("post", reverse("chat:unshare", args=[conversation.pk]), {}),
        ("post", reverse("chat:feedback", args=[conversation.pk, answer.pk]), {"rating": "down", "comment": "Mine"}),
        ("post", reverse("chat:delete", args=[conversation.pk]), {}),
    ]


def test_another_users_conversation_is_404_on_every_url(client, alices_conversation, bob):
    conversation, answer = alices_conversation
    client.force_login(bob)
    for method, url, data in every_url(conversation, answer):
        response = getattr(client, method)(url, data)
        assert response.status_code == 404, (method, url, response.status_code)
    conversation.refresh_from_db()
    assert conversation.title == "Alice's secret plans"
    assert (conversation.system_prompt, conversation.temperature) == ("", 0.7)
    assert conversation.messages.count() == 2


def test_the_owner_reaches_every_url(client, alices_conversation, alice):
    conversation, answer = alices_conversation
    client.force_login(alice)
    expected = {
        "conversation": 200,
        "older": 200,
        "stream": 200,
        "stop": 200,
        "rename": 302,
        "settings": 302,
        "answer-footer": 200,
        "show": 302,
        "share": 302,
        "unshare": 302,
        "feedback": 302,
        "delete": 302,
    }
    # Sending, editing and regenerating are left out: each starts a turn, which needs the server's
    # event loop (test_live_site).
    for method, url, data in every_url(conversation, answer):
        name = resolve(url).url_name
        if name in expected:
            response = getattr(client, method)(url, data)
            assert response.status_code == expected[name], (url, response.status_code)
            if name == "conversation":
                assert b"World domination." in response.content
            if name == "stream":
                assert response["Content-Type"].startswith("text/event-stream")
    assert not Conversation.objects.exists()


def test_signed_out_visitors_are_sent_to_sign_in(client, alices_conversation):
    conversation, answer = alices_conversation
    for method, url, data in every_url(conversation, answer):
        response = getattr(client, method)(url, data)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login"))


def test_every_state_change_needs_the_csrf_token(alices_conversation, alice):
    conversation, answer = alices_conversation
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    posts = [(url, data) for method, url, data in every_url(conversation, answer) if method == "post"]
    posts.append((reverse("chat:send-new"), {"prompt": "hello"}))
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    conversation.refresh_from_db()
    assert conversation.title == "Alice's secret plans"
    assert Conversation.objects.count() == 1
    assert Message.objects.count() == 2


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"prompt": ""}, "Type a message first."),
        ({"prompt": "   \n "}, "Type a message first."),
        ({"prompt": "x" * 101}, "at most 100 characters"),
        ({"prompt": "hi", "temperature": "2.5"}, "Temperature must be between 0 and 2."),
        ({"prompt": "hi", "temperature": "-0.1"}, "Temperature must be between 0 and 2."),
        ({"prompt": "hi", "temperature": "warm"}, "Temperature must be a number."),
        ({"prompt": "hi", "max_tokens": "0"}, "Max tokens must be between 1 and 2047."),
        ({"prompt": "hi", "max_tokens": "2048"}, "Max tokens must be between 1 and 2047."),
        # PostgreSQL's text cannot hold NUL.
        ({"prompt": "a\x00b"}, "Null characters are not allowed."),
    ],
)
def test_bad_input_gets_a_clear_message_and_creates_nothing(client, alice, settings, data, error):
    settings.CHAT_MAX_PROMPT_CHARS = 100
    client.force_login(alice)
    for url in [reverse("chat:send-new")]:
        response = client.post(url, data)
        assert response.status_code == 400
        assert error in response.json()["error"]
    assert Conversation.objects.count() == 0
    assert Message.objects.count() == 0


def test_bad_input_in_an_existing_conversation_saves_nothing(client, alices_conversation, alice):
    conversation, _ = alices_conversation
    client.force_login(alice)
    response = client.post(reverse("chat:send", args=[conversation.pk]), {"prompt": "hi", "temperature": "9"})
    assert response.status_code == 400
    assert conversation.messages.count() == 2
    conversation.refresh_from_db()
    assert conversation.temperature == 0.7


def test_an_id_no_database_can_hold_is_404_on_every_url(client, alices_conversation, alice):
    conversation, answer = alices_conversation
    client.force_login(alice)
    too_large = 2**63  # one more than the largest id SQLite and PostgreSQL store
    urls = [
        *every_url(Conversation(pk=too_large), answer),
        *[url for url in every_url(conversation, Message(pk=too_large)) if "/m/" in url[1]],
        *every_url(Conversation(pk=too_large - 1), Message(pk=too_large - 1)),
    ]
    for method, url, data in urls:
        response = getattr(client, method)(url, data)
        assert response.status_code == 404, (method, url, response.status_code)
    assert Conversation.objects.get() == conversation
    assert conversation.messages.count() == 2


def test_sending_to_conversation_0_is_404_and_creates_nothing(client, alice):
    client.force_login(alice)

    response = client.post(reverse("chat:send", args=[0]), {"prompt": "Tell me"})

    assert response.status_code == 404
    assert not Conversation.objects.exists()


def test_a_title_with_a_nul_character_is_refused(client, alices_conversation, alice):
    conversation, _ = alices_conversation
    client.force_login(alice)
    response = client.post(reverse("chat:rename", args=[conversation.pk]), {"title": "Plans\x00"})
    assert response.status_code == 400
    assert response.json()["error"] == "Null characters are not allowed."
    conversation.refresh_from_db()
    assert conversation.title == "Alice's secret plans"


def test_rename_and_empty_title(client, alices_conversation, alice):
    conversation, _ = alices_conversation
    client.force_login(alice)
    response = client.post(reverse("chat:rename", args=[conversation.pk]), {"title": "  Plans  for  Monday "})
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "Plans for Monday"
    response = client.post(reverse("chat:rename", args=[conversation.pk]), {"title": "   "})
    assert response.status_code == 400
    assert response.json()["error"] == "A title cannot be empty."


@pytest.mark.parametrize("current_url", ["http://[", "http://testserver/c/99999999999999999999/", "::"])
def test_a_page_address_htmx_says_that_is_no_address_is_no_conversation_on_screen(
    client, alices_conversation, alice, current_url
):
    # HX-Current-URL is the client's to send: the sidebar item is drawn as for no open conversation.
    conversation, _ = alices_conversation
    client.force_login(alice)
    headers = {"HX-Request": "true", "HX-Current-URL": current_url}
    response = client.post(reverse("chat:rename", args=[conversation.pk]), {"title": "Plans"}, headers=headers)
    assert response.status_code == 200
    assert 'class="current"' not in response.content.decode()
    pinned = client.post(reverse("chat:pin", args=[conversation.pk]), {"pinned": "true"}, headers=headers)
    assert pinned.status_code == 200


def test_delete_removes_the_conversation_and_its_messages(client, alices_conversation, alice):
    conversation, _ = alices_conversation
    client.force_login(alice)
    page = f"http://testserver{reverse('chat:conversation', args=[conversation.pk])}"
    response = client.post(
        reverse("chat:delete", args=[conversation.pk]), headers={"HX-Request": "true", "HX-Current-URL": page}
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("chat:index")
    assert not Conversation.objects.exists()
    assert not Message.objects.exists()


def test_deleting_another_conversation_than_the_open_one_stays_on_the_page(client, alice):
    open_one = Conversation.objects.create(owner=alice, title="Open")
    other = Conversation.objects.create(owner=alice, title="Other")
    client.force_login(alice)
    page = f"http://testserver{reverse('chat:conversation', args=[open_one.pk])}"
    response = client.post(
        reverse("chat:delete", args=[other.pk]), headers={"HX-Request": "true", "HX-Current-URL": page}
    )
    assert response.status_code == 200
    assert "HX-Redirect" not in response
    assert list(Conversation.objects.all()) == [open_one]


def test_renaming_marks_as_current_only_the_conversation_on_screen(client, alice):
    open_one = Conversation.objects.create(owner=alice, title="Open")
    other = Conversation.objects.create(owner=alice, title="Other")
    client.force_login(alice)
    for on_screen, current in [(open_one, False), (other, True)]:
        page = f"http://testserver{reverse('chat:conversation', args=[on_screen.pk])}"
        response = client.post(
            reverse("chat:rename", args=[other.pk]),
            {"title": "Renamed"},
            headers={"HX-Request": "true", "HX-Current-URL": page},
        )
        assert ('class="current"' in response.content.decode()) is current


def test_model_output_is_escaped_not_interpreted(client, alice):
    conversation = Conversation.objects.create(owner=alice, title="<b>bold</b>")
    Message.objects.create(conversation=conversation, role="assistant", content="<script>alert(1)</script>")
    client.force_login(alice)
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page


def test_sidebar_lists_only_my_conversations_newest_first(client, alice, bob):
    older = Conversation.objects.create(owner=alice, title="Older")
    newer = Conversation.objects.create(owner=alice, title="Newer")
    Conversation.objects.create(owner=bob, title="Bob's")
    client.force_login(alice)
    page = client.get(reverse("chat:index")).content.decode()
    assert "Bob&#x27;s" not in page and "Bob's" not in page
    assert page.index(f"conversation-{newer.pk}") < page.index(f"conversation-{older.pk}")


def test_pages_load_assets_only_from_the_site(client, alice):
    client.force_login(alice)
    page = client.get(reverse("chat:index")).content.decode()
    assert "http://" not in page and "https://" not in page
    assert "/static/django_htmx/htmx-2" in page


def test_pages_forbid_scripts_from_anywhere_but_the_site(client, alice):
    client.force_login(alice)
    policy = client.get(reverse("chat:index"))["Content-Security-Policy"]
    assert "script-src 'self';" in policy


def bounds(field: dict[str, str | None]) -> tuple[float, float]:
    return float(field["min"] or "nan"), float(field["max"] or "nan")


def test_the_prompt_form_offers_the_bounds_the_server_checks(client, alice, settings):
    client.force_login(alice)
    # The context is the one vLLM serves, as its /v1/models says.
    with FakeVLLM(max_model_len=4096) as vllm, translation.override("de"):  # a language that writes 0,7
        settings.VLLM_BASE_URL, settings.VLLM_SERVED_MODEL_NAME = vllm.base_url, ""
        fields = elements(client.get(reverse("chat:index")).content.decode())  # HTML still needs 0.7
    assert bounds(fields["temperature"]) == (rules.TEMPERATURE.low, rules.TEMPERATURE.high)
    assert bounds(fields["top_p"]) == (rules.TOP_P.low, rules.TOP_P.high)
    assert bounds(fields["max_tokens"]) == (rules.max_tokens().low, rules.max_tokens().high) == (1, 4095)
    assert float(fields["temperature"]["value"] or "nan") == settings.CHAT_DEFAULT_TEMPERATURE
    assert float(fields["top_p"]["value"] or "nan") == settings.CHAT_DEFAULT_TOP_P
    assert fields["max_tokens"]["value"] == str(settings.CHAT_DEFAULT_MAX_TOKENS)


def test_a_conversations_prompt_form_shows_its_settings_and_sends_to_it(client, alice):
    conversation = Conversation.objects.create(owner=alice, temperature=0.25, top_p=0.5, max_tokens=99)
    client.force_login(alice)
    fields = elements(client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode())
    assert (fields["temperature"]["value"], fields["top_p"]["value"], fields["max_tokens"]["value"]) == (
        "0.25",
        "0.5",
        "99",
    )
    send = reverse("chat:send", args=[conversation.pk])
    assert fields["prompt-form"]["hx-post"] == fields["prompt-form"]["action"] == send


# --- The settings panel -----------------------------------------------------------------------------


def test_the_settings_panel_saves_a_conversations_settings(client, alices_conversation, alice):
    conversation, _ = alices_conversation
    client.force_login(alice)
    data = {"system_prompt": "  Answer in French.  ", "temperature": "1.2", "top_p": "0.5", "max_tokens": "64"}

    response = client.post(reverse("chat:settings", args=[conversation.pk]), data, headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert "Saved for this conversation." in response.content.decode()
    summary = elements(response.content.decode())["settings-summary"]
    assert summary["hx-swap-oob"] == "true"
    conversation.refresh_from_db()
    assert (conversation.system_prompt, conversation.temperature, conversation.top_p, conversation.max_tokens) == (
        "Answer in French.",
        1.2,
        0.5,
        64,
    )
    # Saving settings is not activity: the branch shown is as it was.
    assert conversation.branch_tip_id is None
    fields = elements(client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode())
    assert (fields["temperature"]["value"], fields["top_p"]["value"], fields["max_tokens"]["value"]) == (
        "1.2",
        "0.5",
        "64",
    )
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert ">Answer in French.</textarea>" in page


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"temperature": "2.5"}, rules.TEMPERATURE.message),
        ({"temperature": "nan"}, "Temperature must be a number."),
        ({"top_p": "0"}, "Top p must be between 0.01 and 1."),
        ({"top_p": "warm"}, "Top p must be a number."),
        ({"max_tokens": "0"}, "Max tokens must be between 1 and 2047."),
        ({"max_tokens": "2048"}, "Max tokens must be between 1 and 2047."),
        ({"max_tokens": "1.5"}, "Max tokens must be a number."),
        ({"system_prompt": "x" * 101}, "The system prompt is too long: at most 100 characters."),
        ({"system_prompt": "a\x00b"}, "Null characters are not allowed."),
    ],
)
def test_settings_out_of_bounds_are_refused_with_the_apis_words_and_nothing_is_saved(
    client, alices_conversation, alice, settings, data, error
):
    settings.CHAT_MAX_PROMPT_CHARS = 100
    conversation, _ = alices_conversation
    client.force_login(alice)
    # A good setting beside the bad one is not saved either.
    response = client.post(reverse("chat:settings", args=[conversation.pk]), {"temperature": "0.1", **data})
    assert response.status_code == 400
    assert response.json()["error"] == error
    conversation.refresh_from_db()
    assert (conversation.system_prompt, conversation.temperature, conversation.top_p, conversation.max_tokens) == (
        "",
        0.7,
        0.9,
        512,
    )


def test_a_new_chats_settings_go_with_its_first_prompt(client, alice):
    client.force_login(alice)
    fields = elements(client.get(reverse("chat:index")).content.decode())
    # Nowhere to save them yet: the panel's form does not post, the prompt form takes its fields.
    assert "hx-post" not in fields["settings"]
    assert fields["prompt-form"]["hx-include"] == "#settings, #model-choice select"  # and the model picker
    assert fields["system_prompt"]["<tag>"] == "textarea"


# --- Branches on the page -----------------------------------------------------------------------------


@pytest.fixture
def branched(alice) -> dict[str, Message]:
    """Q → A, with A regenerated as A2; and Q edited as Q2 → B (shown)."""
    conversation = Conversation.objects.create(owner=alice, title="Branched")
    made: dict[str, Message] = {}
    for name, parent, role, content in [
        ("Q", None, "user", "Question"),
        ("A", "Q", "assistant", "First answer"),
        ("A2", "Q", "assistant", "Second answer"),
        ("Q2", None, "user", "Better question"),
        ("B", "Q2", "assistant", "Answer to the better question"),
    ]:
        made[name] = Message.objects.create(
            conversation=conversation, parent=made.get(parent or ""), role=role, content=content
        )
    conversation.branch_tip = made["B"]
    conversation.save()
    return made


def test_the_page_shows_the_branch_with_each_messages_versions(client, alice, branched):
    conversation = branched["Q"].conversation
    client.force_login(alice)

    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()

    assert "Better question" in page and "Answer to the better question" in page
    assert "First answer" not in page and "Second answer" not in page
    assert "2 / 2" in page
    fields = elements(page)
    assert fields["branch-tip"]["value"] == str(branched["B"].pk)
    assert fields["branch-tip"]["form"] == "prompt-form"
    show_q = reverse("chat:show", args=[conversation.pk, branched["Q"].pk])
    assert f'hx-post="{show_q}"' in page


def test_showing_a_version_re_renders_the_thread_on_its_branch(client, alice, branched):
    conversation = branched["Q"].conversation
    client.force_login(alice)

    response = client.post(
        reverse("chat:show", args=[conversation.pk, branched["Q"].pk]), headers={"HX-Request": "true"}
    )

    thread = response.content.decode()
    assert response.status_code == 200
    # The newest branch below the first question: its regenerated answer, 2 of 2.
    assert "Question" in thread and "Second answer" in thread and "First answer" not in thread
    assert "Better question" not in thread
    assert elements(thread)["branch-tip"]["value"] == str(branched["A2"].pk)
    conversation.refresh_from_db()
    assert conversation.branch_tip_id == branched["A2"].pk
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert "Second answer" in page and "Better question" not in page


def test_a_prompt_after_a_message_of_another_conversation_is_404_and_saves_nothing(client, alice, branched):
    conversation = Conversation.objects.create(owner=alice, title="Another")
    client.force_login(alice)
    response = client.post(reverse("chat:send", args=[conversation.pk]), {"prompt": "Hi", "parent": branched["B"].pk})
    assert response.status_code == 404
    assert not conversation.messages.exists()


def test_editing_an_answer_or_regenerating_a_prompt_is_404(client, alice, branched):
    conversation = branched["Q"].conversation
    client.force_login(alice)
    edit_answer = client.post(reverse("chat:edit", args=[conversation.pk, branched["A"].pk]), {"prompt": "x"})
    regenerate_prompt = client.post(reverse("chat:regenerate", args=[conversation.pk, branched["Q"].pk]))
    assert (edit_answer.status_code, regenerate_prompt.status_code) == (404, 404)
    assert Message.objects.count() == 5


def test_an_answers_footer_has_its_figures_and_how_it_ended(client, alice):
    conversation = Conversation.objects.create(owner=alice)
    prompt = Message.objects.create(conversation=conversation, role="user", content="Go")
    answer = Message.objects.create(
        conversation=conversation,
        parent=prompt,
        role="assistant",
        content="Long",
        model_name="qwen2-7b-instruct",
        finish_reason="length",
        prompt_tokens=42,
        completion_tokens=100,
        time_to_first_token=0.25,
        duration=4.25,
    )
    client.force_login(alice)

    footer = client.get(reverse("chat:answer-footer", args=[conversation.pk, answer.pk])).content.decode()

    for figure in [
        "qwen2-7b-instruct",
        "0.25 s to first token",
        "25.0 tokens/s",  # 100 tokens in the 4 seconds after the first came
        "100 tokens",
        "42 tokens read",
        "Cut off at max tokens",
        "Regenerate",
    ]:
        assert figure in footer, figure


@pytest.mark.parametrize(
    ("status", "error", "shown"),
    [
        ("stopped", "", "Stopped"),
        ("error", "The model server failed (500).", "The model server failed (500)."),
        ("interrupted", "The site stopped before this answer was finished.", "Interrupted"),
    ],
)
def test_an_answers_footer_says_how_it_ended(client, alice, status, error, shown):
    conversation = Conversation.objects.create(owner=alice)
    answer = Message.objects.create(conversation=conversation, role="assistant", status=status, error=error)
    client.force_login(alice)
    footer = client.get(reverse("chat:answer-footer", args=[conversation.pk, answer.pk])).content.decode()
    assert shown in footer


def test_a_search_result_on_another_branch_opens_that_branch_to_read(client, alice, branched):
    conversation = branched["Q"].conversation
    client.force_login(alice)
    url = reverse("chat:conversation", args=[conversation.pk])

    page = client.get(url, {"message": branched["A"].pk}).content.decode()

    assert "First answer" in page and "Better question" not in page
    assert elements(page)["branch-tip"]["value"] == str(branched["A"].pk)
    # Only read: the branch shown is as it was, for a reload and other tabs.
    conversation.refresh_from_db()
    assert conversation.branch_tip_id == branched["B"].pk
    # A message on the branch shown, or no message of this conversation, changes nothing.
    for message in [branched["Q2"].pk, 2**70, "x", ""]:
        page = client.get(url, {"message": message}).content.decode()
        assert elements(page)["branch-tip"]["value"] == str(branched["B"].pk), message


def test_showing_a_version_sets_the_pages_address_back_to_the_conversations(client, alice, branched):
    conversation = branched["Q"].conversation
    client.force_login(alice)
    response = client.post(
        reverse("chat:show", args=[conversation.pk, branched["A"].pk]), headers={"HX-Request": "true"}
    )
    assert response["HX-Replace-Url"] == reverse("chat:conversation", args=[conversation.pk])


def test_the_sidebars_items_are_drawn_once_per_title_and_language(client, alice, monkeypatch):
    # Every send draws the list again: each item is drawn once, then read back, and what it
    # shows (its title, its language, its own addresses) still follows the conversation.
    import django.urls

    drawn: list[str] = []
    real_reverse = django.urls.reverse

    def counted(name, *args, **kwargs):
        drawn.append(name)
        return real_reverse(name, *args, **kwargs)

    monkeypatch.setattr(django.urls, "reverse", counted)  # as the {% url %} tag finds it
    first, second = (Conversation.objects.create(owner=alice, title=title) for title in ("Plans", "Recipes"))
    client.force_login(alice)
    page = client.get(reverse("chat:index")).content.decode()
    assert drawn.count("chat:rename") == 2
    assert reverse("chat:rename", args=[first.pk]) in page and reverse("chat:rename", args=[second.pk]) in page

    drawn.clear()
    page = client.get(reverse("chat:index")).content.decode()
    assert drawn.count("chat:rename") == 0  # read back, not drawn
    assert reverse("chat:export-json", args=[second.pk]) in page and ">Plans</a>" in page

    Conversation.objects.filter(pk=first.pk).update(title="Plans for 2027")
    page = client.get(reverse("chat:index"), headers={"accept-language": "ko"}).content.decode()
    assert ">Plans for 2027</a>" in page and ">Plans</a>" not in page
    with translation.override("ko"):
        assert f">{translation.gettext('Rename')}</button>" in page
    assert ">Rename</button>" not in page
    assert drawn.count("chat:rename") == 2  # a new title, a new language: drawn again


@pytest.fixture
def changed_meanwhile():
    """Has another request change the conversation's row between a view's read of it and its save
    (a turn moving the branch, the naming titling it), as a race would; `fields` say what."""
    from django.db.models.signals import pre_save

    changes: dict = {}

    def land(sender, instance, **kwargs):
        if changes:
            Conversation.objects.filter(pk=instance.pk).update(**changes)
            changes.clear()

    pre_save.connect(land, sender=Conversation)
    yield changes
    pre_save.disconnect(land, sender=Conversation)


def test_a_rename_racing_a_turn_keeps_the_turns_branch_and_settings(
    client, alices_conversation, alice, changed_meanwhile
):
    conversation, answer = alices_conversation
    newer = Message.objects.create(conversation=conversation, parent=answer, role="user", content="And then?")
    client.force_login(alice)
    changed_meanwhile.update(branch_tip=newer, temperature=0.1)

    assert client.post(reverse("chat:rename", args=[conversation.pk]), {"title": "Plans"}).status_code == 302

    conversation.refresh_from_db()
    assert conversation.title == "Plans" and conversation.title_set_by_person
    assert conversation.branch_tip_id == newer.pk and conversation.temperature == 0.1
