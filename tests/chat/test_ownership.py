"""chat/ownership.py: an answer being generated is followed, read or stopped by its owner alone, on
every door that offers one (the page's stream, the REST API's, model-compose's tasks), whatever
conversation the URL names; /v1 streams only the answer its own request started, and continues
only its caller's conversations (tests/api/test_openai_compat.py). Against the live site.
"""

import httpx
import pytest

from chat.models import Attachment, Conversation, Folder, Message, Preset, SharedLink
from tests.accounts import login
from tests.site_server import csrf_headers
from tests.sse import sse_events
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "Alice's secret"
PLANS = "Alice plans a surprise party"  # no character that HTML escapes


def test_a_live_answer_is_offered_to_no_one_but_its_owner_on_any_door(
    live_site, alice_api, alice, bob, bob_token, fake_vllm
):
    # Alice's answer streams, and stays streaming (its first delta given) until she stops it.
    fake_vllm.reply, fake_vllm.fault, fake_vllm.fault_after = [SECRET, " plans."], "stall", 1
    started = alice_api.post("/workflows/runs", json={"input": {"prompt": "Hi"}, "wait_for_completion": False})
    answer = Message.objects.get(pk=int(started.json()["task_id"]))
    alices, mine = answer.conversation_id, Conversation.objects.create(owner=bob).pk
    wait_for(lambda: fake_vllm.requests, what="the answer to start")

    with (
        httpx.Client(base_url=live_site.url, timeout=15) as page,
        httpx.Client(base_url=live_site.url, headers={"Authorization": f"Bearer {bob_token}"}, timeout=15) as token,
    ):
        login(page, "bob")
        probes = (
            [(page, "GET", f"/c/{conversation}/m/{answer.pk}/stream") for conversation in (alices, mine)]
            + [(page, "POST", f"/c/{conversation}/m/{answer.pk}/stop") for conversation in (alices, mine)]
            + [(page, "POST", f"/c/{conversation}/m/{answer.pk}/feedback") for conversation in (alices, mine)]
        )
        for client in (token, page):  # the REST API takes a token or the browser's session
            for conversation in (alices, mine):
                probes += [
                    (client, "GET", f"/api/conversations/{conversation}/messages/{answer.pk}/stream"),
                    (client, "POST", f"/api/conversations/{conversation}/messages/{answer.pk}/stop"),
                    (client, "GET", f"/api/conversations/{conversation}/messages/{answer.pk}/feedback"),
                    (client, "PUT", f"/api/conversations/{conversation}/messages/{answer.pk}/feedback"),
                ]
            probes += [
                (client, "GET", f"/api/tasks/{answer.pk}"),
                (client, "GET", f"/api/tasks/{answer.pk}?output_only=true"),
                (client, "POST", f"/api/tasks/{answer.pk}/cancel"),
            ]
        for client, method, url in probes:
            # Streamed: a stream wrongly offered is refused here, not read until it times out.
            headers = csrf_headers(page) if client is page else {}
            body = {"rating": "up"} if method == "PUT" else None  # a valid body: the 404 comes from the id
            with client.stream(method, url, headers=headers, json=body) as response:
                assert response.status_code == 404, (method, url, response.status_code)
                assert SECRET not in response.read().decode(), url

    # Still streaming: no stop of Bob's reached it. Alice follows it and stops it.
    assert Message.objects.get(pk=answer.pk).status == Message.Status.STREAMING
    with alice_api.stream("GET", f"/conversations/{alices}/messages/{answer.pk}/stream") as followed:
        assert followed.status_code == 200
        first = next(data for name, data in sse_events(followed.iter_lines()) if name == "delta")
    assert first["text"] == SECRET
    assert alice_api.post(f"/tasks/{answer.pk}/cancel").json()["status"] == "cancelled"
    assert Message.objects.get(pk=answer.pk).status == Message.Status.STOPPED


def test_a_persons_shared_links_are_theirs_alone_to_list_and_revoke(live_site, alice, bob):
    # Alice shares a conversation for signed-in people, then a second one for anyone.
    secret_conversation = Conversation.objects.create(owner=alice, title="Plans")
    Message.objects.create(conversation=secret_conversation, role="user", content=PLANS)
    with (
        httpx.Client(base_url=live_site.url, timeout=15) as alices,
        httpx.Client(base_url=live_site.url, timeout=15) as bobs,
        httpx.Client(base_url=live_site.url, timeout=15) as nobody,
    ):
        login(alices, "alice")
        login(bobs, "bob")
        shared = alices.post(
            f"/c/{secret_conversation.pk}/share", data={"audience": "signed_in"}, headers=csrf_headers(alices)
        )
        assert shared.status_code == 302
        link = SharedLink.objects.get()
        url = f"/s/{link.token}/"

        # Signed out, a link for signed-in people is not readable: sent to sign in, nothing shown.
        refused = nobody.get(url)
        assert refused.status_code == 302 and "/accounts/login/" in refused.headers["Location"]
        assert PLANS not in refused.text

        # Bob, with the link, reads it; but he cannot list it, revoke it, or share it otherwise.
        assert PLANS in bobs.get(url).text
        assert link.token not in bobs.get("/account/links/").text
        for path, data in [
            (f"/account/links/{link.pk}/revoke", {}),
            (f"/c/{secret_conversation.pk}/unshare", {}),
            (f"/c/{secret_conversation.pk}/share", {"audience": "anyone"}),
        ]:
            response = bobs.post(path, data=data, headers=csrf_headers(bobs))
            assert response.status_code == 404, (path, response.status_code)
            assert PLANS not in response.text
        assert SharedLink.objects.get().audience == "signed_in"

        # Alice lists it and revokes it: then it is a 404 for everyone, her included.
        assert url in alices.get("/account/links/").text
        revoked = alices.post(f"/account/links/{link.pk}/revoke", headers=csrf_headers(alices))
        assert revoked.status_code == 302
        for client in (alices, bobs, nobody):
            response = client.get(url)
            assert response.status_code == 404
            assert PLANS not in response.text


def test_another_persons_folders_pins_archive_and_presets_are_404_on_every_door(live_site, alice, bob, bob_token):
    """Every route of chat/folder_views.py, chat/preset_views.py, api/shelves.py and api/presets.py."""
    alices = Conversation.objects.create(owner=alice, title=SECRET)
    folder = Folder.objects.create(owner=alice, name=SECRET)
    preset = Preset.objects.create(owner=alice, name=SECRET, system_prompt=SECRET)
    c, f, p = alices.pk, folder.pk, preset.pk
    page_probes = [
        ("POST", f"/c/{c}/pin", {"pinned": "true"}),
        ("POST", f"/c/{c}/folder", {"folder": ""}),
        ("POST", f"/c/{c}/archive", {}),
        ("POST", f"/c/{c}/restore", {}),
        ("GET", f"/folders/{f}/", None),
        ("POST", f"/folders/{f}/rename", {"name": "Bob's now"}),
        ("POST", f"/folders/{f}/delete", {}),
        ("GET", f"/presets/{p}/", None),
        ("POST", f"/presets/{p}/", {"name": "Bob's now", "temperature": "1", "top_p": "1", "max_tokens": "1"}),
        ("POST", f"/presets/{p}/delete", {}),
    ]
    api_probes = [
        ("PATCH", f"/api/conversations/{c}", {"pinned": True, "archived": True}),
        ("PATCH", f"/api/conversations/{c}", {"folder_id": None}),
        ("PATCH", f"/api/folders/{f}", {"name": "Bob's now"}),
        ("DELETE", f"/api/folders/{f}", None),
        ("GET", f"/api/presets/{p}", None),
        ("PATCH", f"/api/presets/{p}", {"name": "Bob's now"}),
        ("DELETE", f"/api/presets/{p}", None),
        ("POST", "/api/conversations", {"preset_id": p}),
    ]
    with (
        httpx.Client(base_url=live_site.url, timeout=15) as page,
        httpx.Client(base_url=live_site.url, headers={"Authorization": f"Bearer {bob_token}"}, timeout=15) as token,
    ):
        login(page, "bob")
        probes: list[tuple[httpx.Client, str, str, dict[str, str] | None, object]] = [
            (page, method, url, body, None) for method, url, body in page_probes
        ]
        for client in (token, page):
            probes += [(client, method, url, None, body) for method, url, body in api_probes]
        for client, method, url, form, json in probes:
            headers = csrf_headers(page) if client is page else {}
            response = client.request(method, url, headers=headers, data=form, json=json)
            assert response.status_code == 404, (method, url, response.status_code)
            assert SECRET not in response.text, url
        # Nor on his own pages and lists.
        for url in ["/", "/archive/", "/presets/", f"/?preset={p}"]:
            assert SECRET not in page.get(url).text, url
        for url in [
            "/api/folders",
            "/api/presets",
            "/api/conversations?archived=true",
            f"/api/conversations?folder_id={f}",
        ]:
            assert SECRET not in token.get(url).text, url
    alices.refresh_from_db()
    assert (alices.pinned, alices.archived_at, alices.folder_id) == (False, None, None)
    assert Folder.objects.get(pk=f).name == SECRET and Preset.objects.get(pk=p).name == SECRET


def test_another_persons_file_is_404_on_every_door_and_never_attached(live_site, alice, bob, bob_token, fake_vllm):
    """Every route of chat/file_views.py and api/files.py, and every door that sends a prompt with files."""
    with httpx.Client(base_url=live_site.url, timeout=15) as alices:
        login(alices, "alice")
        uploaded = alices.post("/files", files={"file": ("plans.txt", PLANS.encode())}, headers=csrf_headers(alices))
        assert uploaded.status_code == 201, uploaded.text
    file_id = uploaded.json()["id"]
    bobs_conversation = Conversation.objects.create(owner=bob)
    with (
        httpx.Client(base_url=live_site.url, timeout=15) as page,
        httpx.Client(base_url=live_site.url, headers={"Authorization": f"Bearer {bob_token}"}, timeout=15) as token,
    ):
        login(page, "bob")
        probes: list[tuple[httpx.Client, str, str, dict[str, object] | None, object]] = [
            (page, "GET", f"/files/{file_id}/", None, None),
            (page, "DELETE", f"/files/{file_id}/", None, None),
            (page, "POST", "/c/new/send", {"prompt": "Read it", "files": file_id}, None),
            (page, "POST", f"/c/{bobs_conversation.pk}/send", {"prompt": "Read it", "files": file_id}, None),
        ]
        for client in (token, page):
            probes += [
                (client, "GET", f"/api/files/{file_id}", None, None),
                (client, "DELETE", f"/api/files/{file_id}", None, None),
                (
                    client,
                    "POST",
                    f"/api/conversations/{bobs_conversation.pk}/messages",
                    None,
                    {"prompt": "Read it", "files": [file_id]},
                ),
                (client, "POST", "/api/workflows/runs", None, {"input": {"prompt": "Read it", "files": [file_id]}}),
            ]
        probes.append(
            (
                token,
                "POST",
                "/v1/chat/completions",
                None,
                {
                    "model": fake_vllm.served_model_name,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Read it"},
                                {"type": "file", "file": {"file_id": file_id}},
                            ],
                        }
                    ],
                },
            )
        )
        for client, method, url, form, json in probes:
            headers = csrf_headers(page) if client is page else {}
            response = client.request(method, url, headers=headers, data=form, json=json)
            assert response.status_code == 404, (method, url, response.status_code, response.text)
            assert PLANS not in response.text, url
        # Nor is it listed among his files not yet sent.
        assert file_id not in page.get("/files/unsent").text
    assert fake_vllm.requests == []  # no prompt of Bob's went out, with the file or without
    assert not Message.objects.filter(conversation__owner=bob).exists()
    assert Attachment.objects.get(pk=file_id).message is None
