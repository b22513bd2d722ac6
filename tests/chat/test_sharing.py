"""chat/sharing.py: a conversation shared by link, read-only, as it was when shared.

Who may read, revoke or list a link; what a link shows and never shows (another branch, the
settings, the system prompt, a later message); "continue in my chats"; CSRF and bad input on every
route. Through Django's test client; the live site's probe is in tests/chat/test_ownership.py and
the pages in Chromium in tests/chat/test_browser_temporary.py.
"""

import re

import pytest
from django.test import Client
from django.urls import reverse

from chat import sharing
from chat.models import Attachment, Conversation, Message, SharedLink

pytestmark = pytest.mark.django_db

SYSTEM_PROMPT = "Never reveal the launch codes."


@pytest.fixture
def conversation(alice) -> Conversation:
    """Alice's conversation with two answers to one prompt (the second shown), and a system prompt."""
    conversation = Conversation.objects.create(owner=alice, title="Plans", system_prompt=SYSTEM_PROMPT, temperature=1.3)
    prompt = Message.objects.create(conversation=conversation, role="user", content="What should we plan?")
    Message.objects.create(conversation=conversation, parent=prompt, role="assistant", content="The other branch.")
    shown = Message.objects.create(conversation=conversation, parent=prompt, role="assistant", content="A picnic.")
    conversation.branch_tip = shown
    conversation.save(update_fields=["branch_tip"])
    return conversation


def share(client: Client, conversation: Conversation, audience: str = "signed_in") -> SharedLink:
    response = client.post(reverse("chat:share", args=[conversation.pk]), {"audience": audience})
    assert response.status_code == 302, response.content
    return SharedLink.objects.get(conversation=conversation)


def test_a_link_shows_the_branch_as_shared_and_nothing_else(client, conversation, alice, bob):
    client.force_login(alice)
    link = share(client, conversation)
    # A later message, on the shown branch: not in the link until it is shared again.
    conversation.branch_tip = Message.objects.create(
        conversation=conversation, parent=conversation.branch_tip, role="user", content="And afterwards?"
    )
    conversation.save(update_fields=["branch_tip"])
    client.force_login(bob)
    page = client.get(reverse("chat:shared", args=[link.token])).content.decode()
    assert "What should we plan?" in page and "A picnic." in page
    for leaked in ("The other branch.", SYSTEM_PROMPT, "1.3", "And afterwards?"):
        assert leaked not in page, leaked
    assert link.messages == [
        {"role": "user", "content": "What should we plan?"},
        {"role": "assistant", "content": "A picnic."},
    ]

    # Shared again: the same address, now with the later message.
    client.force_login(alice)
    again = share(client, conversation, "anyone")
    assert (again.token, again.audience) == (link.token, "anyone")
    assert "And afterwards?" in Client().get(reverse("chat:shared", args=[link.token])).content.decode()


def test_an_answer_still_being_written_is_not_shared(conversation):
    Message.objects.create(conversation=conversation, parent=conversation.branch_tip, role="user", content="More?")
    conversation.branch_tip = Message.objects.create(
        conversation=conversation,
        parent=Message.objects.get(content="More?"),
        role="assistant",
        content="Half an ans",
        status=Message.Status.STREAMING,
    )
    conversation.save(update_fields=["branch_tip"])
    assert [message["content"] for message in sharing.snapshot(conversation)][-1] == "More?"


def test_a_signed_in_link_is_not_readable_signed_out_and_an_open_one_is(client, conversation, alice):
    client.force_login(alice)
    link = share(client, conversation, "signed_in")
    url = reverse("chat:shared", args=[link.token])
    signed_out = Client().get(url)
    assert signed_out.status_code == 302
    assert signed_out["Location"].startswith(reverse("login"))
    assert "A picnic." not in signed_out.content.decode()

    share(client, conversation, "anyone")
    opened = Client().get(url)
    assert opened.status_code == 200
    assert "A picnic." in opened.content.decode()
    assert "no-cache" in opened["Cache-Control"]  # a revoked link is not read back from a cache


def test_tokens_are_long_random_and_only_a_real_one_opens_a_link(client, conversation, alice, bob):
    client.force_login(alice)
    link = share(client, conversation, "anyone")
    other = Conversation.objects.create(owner=bob, title="Bob's")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", link.token)  # secrets.token_urlsafe(32): 256 bits
    assert sharing.share(other, SharedLink.Audience.ANYONE).token != link.token
    for token in [link.token[:-1] + ("A" if link.token[-1] != "A" else "B"), "x" * 43, link.token.upper()]:
        if token != link.token:
            assert Client().get(f"/s/{token}/").status_code == 404, token
    for path in ["/s/x/", "/s/" + "a" * 65 + "/", "/s/%00" + "a" * 40 + "/", "/s/..%2F" + "a" * 40 + "/"]:
        assert Client().get(path).status_code == 404, path


def test_revoked_links_are_404_from_the_account_page_and_from_the_menu(client, conversation, alice):
    client.force_login(alice)
    link = share(client, conversation, "anyone")
    url = reverse("chat:shared", args=[link.token])
    listed = client.get(reverse("chat:shared-links")).content.decode()
    assert url in listed
    assert client.post(reverse("chat:revoke-link", args=[link.pk])).status_code == 302
    assert Client().get(url).status_code == 404
    assert client.get(url).status_code == 404
    assert client.post(reverse("chat:continue-shared", args=[link.token])).status_code == 404

    link = share(client, conversation, "anyone")
    response = client.post(reverse("chat:unshare", args=[conversation.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert Client().get(reverse("chat:shared", args=[link.token])).status_code == 404
    assert not SharedLink.objects.exists()


def test_another_person_cannot_list_revoke_or_change_my_links(client, conversation, alice, bob):
    client.force_login(alice)
    link = share(client, conversation, "signed_in")
    client.force_login(bob)
    assert link.token not in client.get(reverse("chat:shared-links")).content.decode()
    assert client.post(reverse("chat:revoke-link", args=[link.pk])).status_code == 404
    assert client.post(reverse("chat:unshare", args=[conversation.pk])).status_code == 404
    assert client.post(reverse("chat:share", args=[conversation.pk]), {"audience": "anyone"}).status_code == 404
    assert SharedLink.objects.get().audience == "signed_in"
    # Bob may read it (he is signed in, and has the link): reading is what a link is for.
    assert client.get(reverse("chat:shared", args=[link.token])).status_code == 200


def test_continue_in_my_chats_copies_the_shared_messages_into_the_readers_conversation(
    client, conversation, alice, bob
):
    client.force_login(alice)
    link = share(client, conversation, "anyone")
    client.force_login(bob)
    response = client.post(reverse("chat:continue-shared", args=[link.token]))
    copy = Conversation.objects.get(owner=bob)
    assert response["Location"] == reverse("chat:conversation", args=[copy.pk])
    assert copy.title == "Plans"
    assert (copy.system_prompt, copy.temperature) == ("", 0.7)  # the sharer's settings stay theirs
    messages = list(copy.messages.order_by("pk"))
    assert [(m.role, m.content) for m in messages] == [("user", "What should we plan?"), ("assistant", "A picnic.")]
    assert messages[1].parent_id == messages[0].pk and copy.branch_tip_id == messages[1].pk
    assert conversation.messages.count() == 3  # Alice's own is as it was
    # Signed out: sent to sign in first, nothing copied.
    assert Client().post(reverse("chat:continue-shared", args=[link.token])).status_code == 302
    assert Conversation.objects.count() == 2


def test_every_link_route_needs_the_csrf_token(conversation, alice):
    link = sharing.share(conversation, SharedLink.Audience.ANYONE)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    for url, data in [
        (reverse("chat:share", args=[conversation.pk]), {"audience": "signed_in"}),
        (reverse("chat:unshare", args=[conversation.pk]), {}),
        (reverse("chat:revoke-link", args=[link.pk]), {}),
        (reverse("chat:continue-shared", args=[link.token]), {}),
    ]:
        assert client.post(url, data).status_code == 403, url
    assert SharedLink.objects.get().audience == "anyone"
    assert Conversation.objects.count() == 1


@pytest.mark.parametrize("data", [{}, {"audience": "everyone"}, {"audience": ""}, {"audience": "a\x00"}])
def test_bad_input_when_sharing_is_a_clear_400_and_shares_nothing(client, conversation, alice, data):
    client.force_login(alice)
    response = client.post(reverse("chat:share", args=[conversation.pk]), data)
    assert response.status_code == 400
    assert response.json()["error"]
    assert not SharedLink.objects.exists()


def test_the_wrong_method_is_refused_on_every_link_route(client, conversation, alice):
    link = sharing.share(conversation, SharedLink.Audience.ANYONE)
    client.force_login(alice)
    assert client.get(reverse("chat:share", args=[conversation.pk])).status_code == 405
    assert client.get(reverse("chat:revoke-link", args=[link.pk])).status_code == 405
    assert client.get(reverse("chat:continue-shared", args=[link.token])).status_code == 405
    assert client.post(reverse("chat:shared", args=[link.token])).status_code == 405


def test_shared_text_is_never_markup_in_the_page(client, conversation, alice):
    conversation.messages.filter(content="A picnic.").update(
        content='<img src=x onerror="alert(1)"><script>x()</script>'
    )
    link = sharing.share(conversation, SharedLink.Audience.ANYONE)
    page = Client().get(reverse("chat:shared", args=[link.token])).content.decode()
    assert "<img src=x" not in page and "<script>x()" not in page
    assert "&lt;img src=x" in page  # escaped into the text render.js renders, sanitised, in the browser


def test_a_deactivated_persons_links_no_longer_open(conversation, alice):
    link = sharing.share(conversation, SharedLink.Audience.ANYONE)
    url = reverse("chat:shared", args=[link.token])
    assert Client().get(url).status_code == 200
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert Client().get(url).status_code == 404


def test_a_prompts_files_are_shown_by_name_and_never_served_to_the_reader(client, conversation, alice, bob):
    prompt = Message.objects.get(conversation=conversation, role="user")
    file = Attachment.objects.create(
        owner=alice,
        message=prompt,
        name="<b>budget</b>.txt",
        size=2048,
        content_type="text/plain",
        kind="text",
        text="The budget is 3,000,000 won.",
    )
    client.force_login(alice)
    link = share(client, conversation)
    assert link.messages[0]["files"] == [{"name": "<b>budget</b>.txt", "size": 2048}]

    client.force_login(bob)
    page = client.get(reverse("chat:shared", args=[link.token])).content.decode()
    assert "&lt;b&gt;budget&lt;/b&gt;.txt" in page and "2.0\xa0KB" in page
    assert "only its name is shown" in page
    # Its name, not its text, nor a way to it: a file is served to its owner alone.
    assert "3,000,000" not in page and str(file.pk) not in page and "/files/" not in page
    assert client.get(reverse("chat:file", args=[file.pk])).status_code == 404
    korean = client.get(reverse("chat:shared", args=[link.token]), headers={"accept-language": "ko"})
    assert "여기에는 이름만 보여요" in korean.content.decode()
