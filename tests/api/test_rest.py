"""The REST API under /api/, over real sockets against the live site and the fake vLLM."""

import hashlib
import io
import json

import httpx
import pytest
from django.core.management import call_command

from chat.models import ApiToken, Conversation, Message
from tests.accounts import login
from tests.site_server import csrf_headers
from tests.sse import sse_events, sse_events_with_ids, sse_frames
from tests.waiting import wait_for

live = pytest.mark.django_db(transaction=True)


def conversation_of(user, **fields) -> Conversation:
    return Conversation.objects.create(owner=user, title="Bob's secrets", **fields)


# --- Authentication -----------------------------------------------------------------------------

EVERY_ROUTE = [
    ("GET", "/conversations"),
    ("POST", "/conversations"),
    ("GET", "/conversations/{c}"),
    ("PATCH", "/conversations/{c}"),
    ("DELETE", "/conversations/{c}"),
    ("POST", "/conversations/{c}/messages"),
    ("GET", "/conversations/{c}/messages/{m}/stream"),
    ("POST", "/conversations/{c}/messages/{m}/stop"),
    ("POST", "/conversations/{c}/messages/{m}/regenerate"),
    ("POST", "/conversations/{c}/messages/{m}/edit"),
    ("POST", "/conversations/{c}/messages/{m}/show"),
    ("GET", "/workflows"),
    ("GET", "/workflows/__default__/schema"),
    ("POST", "/workflows/runs"),
    ("GET", "/tasks/{m}"),
    ("POST", "/tasks/{m}/cancel"),
]
BODIES = {
    "POST /conversations": {"title": "x"},
    "PATCH /conversations/{c}": {"title": "Mine now"},
    "POST /conversations/{c}/messages": {"prompt": "Tell me"},
    "POST /conversations/{c}/messages/{m}/regenerate": {},
    "POST /conversations/{c}/messages/{m}/edit": {"prompt": "Tell me"},
    "POST /workflows/runs": {"input": {"prompt": "Tell me"}},
}


@live
@pytest.mark.parametrize("authorization", [None, "Bearer cs_not-a-real-token", "Basic YWxpY2U6cGFzcw=="])
def test_a_request_without_a_valid_token_or_session_is_401_on_every_route(live_site, alice, authorization):
    conversation = conversation_of(alice)
    answer = Message.objects.create(conversation=conversation, role="assistant", content="kept")
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=f"{live_site.url}/api", headers=headers, timeout=10) as client:
        for method, route in EVERY_ROUTE:
            url = route.format(c=conversation.pk, m=answer.pk)
            response = client.request(method, url, json=BODIES.get(f"{method} {route}"))
            assert response.status_code == 401, (method, route, response.text)
            assert "Authorization: Bearer" in response.json()["detail"]
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert Conversation.objects.get(pk=conversation.pk).title == "Bob's secrets"
    assert Message.objects.count() == 1


@pytest.mark.django_db
def test_createtoken_prints_a_secret_of_which_only_the_hash_is_stored(alice):
    out, err = io.StringIO(), io.StringIO()
    call_command("createtoken", "alice", "--name", "laptop", stdout=out, stderr=err)

    secret = out.getvalue().strip()
    token = ApiToken.objects.get()
    assert token.user == alice and token.name == "laptop"
    assert token.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(token.prefix) and len(secret) > 40
    assert secret not in {token.name, token.prefix}
    assert "only its hash is stored" in err.getvalue()
    assert ApiToken.objects.user_for(secret) == alice
    assert ApiToken.objects.user_for(secret + "x") is None


@pytest.mark.django_db
def test_createtoken_for_an_unknown_user_fails_clearly():
    with pytest.raises(Exception, match="There is no user 'nobody'"):
        call_command("createtoken", "nobody", stdout=io.StringIO())


@pytest.mark.django_db
def test_a_token_added_in_the_admin_shows_its_secret_once(admin_client, alice):
    response = admin_client.post("/admin/chat/apitoken/add/", {"user": alice.pk, "name": "phone"}, follow=True)

    [shown] = [str(m) for m in response.context["messages"] if "secret" in str(m)]
    assert "will not be shown again" in shown
    secret = shown.split("secret is ")[1].split(" ")[0]
    token = ApiToken.objects.get()
    assert token.name == "phone"
    assert ApiToken.objects.user_for(secret) == alice
    change_page = admin_client.get(f"/admin/chat/apitoken/{token.pk}/change/")
    assert secret not in change_page.content.decode()
    assert token.prefix in change_page.content.decode()


@live
def test_a_token_authenticates_and_its_last_use_is_recorded(alice_api, alice):
    token = ApiToken.objects.get(user=alice)
    assert token.last_used_at is None
    assert alice_api.get("/conversations").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


@live
def test_a_token_of_an_inactive_user_is_refused(alice_api, alice):
    alice.is_active = False
    alice.save()
    assert alice_api.get("/conversations").status_code == 401


@live
def test_the_browser_session_works_and_unsafe_methods_need_the_csrf_token(live_site, alice):
    with httpx.Client(base_url=live_site.url, timeout=10) as browser:
        login(browser, "alice")
        assert browser.get("/api/conversations").status_code == 200
        refused = browser.post("/api/conversations", json={"title": "No token"})
        assert refused.status_code == 403
        assert "CSRF" in refused.json()["detail"]
        created = browser.post("/api/conversations", json={"title": "With token"}, headers=csrf_headers(browser))
        assert created.status_code == 201
    assert Conversation.objects.get().title == "With token"


# --- Conversations ------------------------------------------------------------------------------


@live
def test_conversations_are_created_listed_newest_first_read_renamed_and_deleted(alice_api, alice, bob):
    conversation_of(bob)
    made = []
    for title in ("First", "Second", "Third"):
        response = alice_api.post("/conversations", json={"title": f"  {title}  chat ", "temperature": 0.2})
        assert response.status_code == 201, response.text
        made.append(response.json())
    assert made[0]["title"] == "First chat"
    assert made[0]["temperature"] == 0.2 and made[0]["max_tokens"] == 512

    page = alice_api.get("/conversations", params={"limit": 2}).json()
    assert page["count"] == 3
    assert [c["title"] for c in page["items"]] == ["Third chat", "Second chat"]
    rest = alice_api.get("/conversations", params={"limit": 2, "offset": 2}).json()
    assert [c["title"] for c in rest["items"]] == ["First chat"]

    first = made[0]["id"]
    renamed = alice_api.patch(f"/conversations/{first}", json={"title": "Renamed"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Renamed"
    assert alice_api.get("/conversations").json()["items"][0]["title"] == "Renamed"
    assert alice_api.patch(f"/conversations/{first}", json={"title": "   "}).status_code == 422

    detail = alice_api.get(f"/conversations/{first}").json()
    assert detail["title"] == "Renamed" and detail["messages"] == []

    assert alice_api.delete(f"/conversations/{first}").status_code == 204
    assert alice_api.get(f"/conversations/{first}").status_code == 404
    assert not Conversation.objects.filter(pk=first).exists()


# --- Messages -----------------------------------------------------------------------------------


@live
def test_a_prompt_is_answered_as_json_once_complete_and_saved(alice_api, fake_vllm):
    fake_vllm.reply = ["Local", " models", " stay", " home."]
    conversation = alice_api.post("/conversations", json={"system_prompt": "Be brief."}).json()

    response = alice_api.post(
        f"/conversations/{conversation['id']}/messages",
        json={"prompt": "  Why local models?  ", "temperature": 0.3, "max_tokens": 64},
    )

    assert response.status_code == 200, response.text
    turn = response.json()
    assert turn["prompt"]["content"] == "Why local models?"
    assert turn["answer"]["content"] == "Local models stay home."
    assert turn["answer"]["status"] == "complete"
    assert turn["answer"]["finish_reason"] == "stop"
    assert turn["answer"]["completion_tokens"] == 4
    sent = fake_vllm.requests[-1]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 64
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why local models?"},
    ]
    detail = alice_api.get(f"/conversations/{conversation['id']}").json()
    assert detail["title"] == "Why local models?"
    assert detail["temperature"] == 0.3  # the settings sent are kept for the next turns, as on the page
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "Why local models?"),
        ("assistant", "Local models stay home."),
    ]


@live
def test_a_prompt_streams_the_same_events_as_the_page(alice_api, fake_vllm):
    fake_vllm.reply = ["Line one\n", "line <b>two</b>"]
    conversation = alice_api.post("/conversations", json={}).json()

    with alice_api.stream(
        "POST", f"/conversations/{conversation['id']}/messages", json={"prompt": "Two lines", "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))

    assert "".join(data["text"] for name, data in events if name == "delta") == "Line one\nline <b>two</b>"
    name, done = events[-1]
    assert name == "done" and done["status"] == "complete"
    assert done["message_id"] == int(response.headers["X-Message-Id"])
    assert Message.objects.get(pk=done["message_id"]).content == "Line one\nline <b>two</b>"
    # An ended answer can be followed again, whole.
    with alice_api.stream("GET", f"/conversations/{conversation['id']}/messages/{done['message_id']}/stream") as again:
        assert [name for name, _ in sse_events(again.iter_lines())] == ["delta", "done"]


@live
def test_each_event_says_how_far_the_client_is_and_a_reconnect_resumes_from_there(alice_api, fake_vllm):
    fake_vllm.reply = ["one", " two", " three"]
    conversation = alice_api.post("/conversations", json={}).json()
    turn = alice_api.post(f"/conversations/{conversation['id']}/messages", json={"prompt": "Count"}).json()
    url = f"/conversations/{conversation['id']}/messages/{turn['answer']['id']}/stream"

    def follow(last_event_id: str | None) -> list[tuple[str, str, str]]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        with alice_api.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            return [(name, data.get("text", ""), id) for name, data, id in sse_events_with_ids(response.iter_lines())]

    assert follow(None) == [("delta", "one two three", "13"), ("done", "", "13")]
    assert follow("3") == [("delta", " two three", "13"), ("done", "", "13")]
    assert follow("13") == [("done", "", "13")]
    for nonsense in ("-1", "three", "1e3", "9" * 40, ""):
        assert follow(nonsense)[0] == ("delta", "one two three", "13"), nonsense  # from the start, never a 500


@live
def test_a_failed_answer_comes_back_saved_with_its_error(alice_api, fake_vllm):
    fake_vllm.fault = "server_error"
    conversation = alice_api.post("/conversations", json={}).json()
    turn = alice_api.post(f"/conversations/{conversation['id']}/messages", json={"prompt": "Fail"}).json()
    assert turn["answer"]["status"] == "error"
    assert "The model server failed (500)" in turn["answer"]["error"]


@live
def test_a_running_answer_can_be_stopped_and_vllm_sees_its_request_closed(alice_api, fake_vllm):
    fake_vllm.reply = [f" word{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    conversation = alice_api.post("/conversations", json={}).json()
    messages_url = f"/conversations/{conversation['id']}/messages"

    with alice_api.stream("POST", messages_url, json={"prompt": "Talk", "stream": True}) as response:
        frames = sse_frames(response.iter_lines())
        assert next(frames)[0] == "delta"
        stopped = alice_api.post(f"{messages_url}/{response.headers['X-Message-Id']}/stop")
        rest = list(frames)

    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped" and stopped.json()["content"]
    assert rest[-1][0] == "done" and json.loads(rest[-1][1])["status"] == "stopped"
    assert fake_vllm.wait_for_disconnect()


@live
def test_an_answer_outlives_a_streaming_client_that_goes_away(alice_api, fake_vllm):
    fake_vllm.reply = [f" t{i}" for i in range(30)]
    fake_vllm.token_delay = 0.02
    conversation = alice_api.post("/conversations", json={}).json()
    with alice_api.stream(
        "POST", f"/conversations/{conversation['id']}/messages", json={"prompt": "Go on", "stream": True}
    ) as response:
        next(sse_frames(response.iter_lines()))
        answer_id = int(response.headers["X-Message-Id"])
    wait_for(lambda: Message.objects.get(pk=answer_id).status == Message.Status.COMPLETE)
    assert Message.objects.get(pk=answer_id).content == "".join(fake_vllm.reply)
    assert fake_vllm.disconnects() == 0


# --- Another user's conversations ---------------------------------------------------------------


@live
def test_another_users_conversation_and_tasks_are_404_on_every_route(alice_api, bob, fake_vllm):
    conversation = conversation_of(bob, system_prompt="Bob's")
    Message.objects.create(conversation=conversation, role="user", content="Bob's question")
    answer = Message.objects.create(conversation=conversation, role="assistant", content="Bob's answer")

    for method, route in EVERY_ROUTE:
        if "{" not in route:
            continue
        url = route.format(c=conversation.pk, m=answer.pk)
        response = alice_api.request(method, url, json=BODIES.get(f"{method} {route}"))
        assert response.status_code == 404, (method, route, response.text)
        assert response.json() == {"detail": "Not found."}

    assert Conversation.objects.get(pk=conversation.pk).title == "Bob's secrets"
    assert Message.objects.filter(conversation=conversation).count() == 2
    assert fake_vllm.requests == []
    assert alice_api.get("/conversations").json() == {"items": [], "count": 0}


# --- Bad input ----------------------------------------------------------------------------------

BAD_MESSAGES = [
    ("not json", b"{prompt: hi", 400, "not valid JSON"),
    ("a list", [{"prompt": "hi"}], 422, "body"),
    ("no prompt", {}, 422, "prompt"),
    ("an empty prompt", {"prompt": ""}, 422, "Type a message first"),
    ("a blank prompt", {"prompt": " \n\t "}, 422, "Type a message first"),
    ("a number as prompt", {"prompt": 42}, 422, "prompt"),
    ("a prompt too long", {"prompt": "x" * 16001}, 422, "at most 16000 characters"),
    ("a lone surrogate", b'{"prompt": "\\ud800"}', 422, "Unicode"),
    ("a NUL character", {"prompt": "a\x00b"}, 422, "Null characters are not allowed"),
    ("temperature below 0", {"prompt": "hi", "temperature": -0.1}, 422, "Temperature must be between 0 and 2"),
    ("temperature above 2", {"prompt": "hi", "temperature": 2.5}, 422, "Temperature must be between 0 and 2"),
    ("temperature as text", {"prompt": "hi", "temperature": "0.5"}, 422, "temperature"),
    ("temperature as a flag", {"prompt": "hi", "temperature": True}, 422, "temperature"),
    ("temperature NaN", b'{"prompt": "hi", "temperature": NaN}', 422, "Temperature"),
    ("max_tokens 0", {"prompt": "hi", "max_tokens": 0}, 422, "Max tokens must be between 1 and 2047"),
    ("max_tokens the context", {"prompt": "hi", "max_tokens": 2048}, 422, "Max tokens must be between 1 and 2047"),
    ("max_tokens a fraction", {"prompt": "hi", "max_tokens": 1.5}, 422, "max_tokens"),
    ("top_p 0", {"prompt": "hi", "top_p": 0}, 422, "Top p must be between"),
    ("stream as text", {"prompt": "hi", "stream": "yes"}, 422, "stream"),
    ("an unknown field", {"prompt": "hi", "temprature": 0.5}, 422, "temprature"),
]


@live
@pytest.mark.parametrize(("case", "body", "status", "says"), BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES])
def test_a_bad_message_is_a_4xx_json_that_says_why_and_saves_nothing(alice_api, fake_vllm, case, body, status, says):
    conversation = alice_api.post("/conversations", json={}).json()
    url = f"/conversations/{conversation['id']}/messages"
    if isinstance(body, bytes):
        response = alice_api.post(url, content=body, headers={"Content-Type": "application/json"})
    else:
        response = alice_api.post(url, json=body)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert says in response.json()["detail"]
    assert Message.objects.count() == 0
    assert fake_vllm.requests == []


BAD_RUNS = [
    ("not json", b"curl -d oops", 400, "not valid JSON"),
    ("no input", {}, 422, "input"),
    ("input not an object", {"input": "Explain"}, 422, "input"),
    ("no prompt", {"input": {"temperature": 0.7}}, 422, "input.prompt"),
    ("an empty prompt", {"input": {"prompt": ""}}, 422, "Type a message first"),
    ("a NUL character", {"input": {"prompt": "\x00"}}, 422, "Null characters are not allowed"),
    ("temperature above 2", {"input": {"prompt": "hi", "temperature": 3}}, 422, "Temperature must be between"),
    ("temperature as text", {"input": {"prompt": "hi", "temperature": "warm"}}, 422, "input.temperature"),
    ("max_tokens too large", {"input": {"prompt": "hi", "max_tokens": 5000}}, 422, "Max tokens must be between"),
    ("an unknown input", {"input": {"prompt": "hi", "temprature": 1}}, 422, "input.temprature"),
    ("an unknown field", {"input": {"prompt": "hi"}, "wait": False}, 422, "wait"),
    ("another workflow", {"workflow_id": "summarize", "input": {"prompt": "hi"}}, 404, "'summarize' not found"),
    ("no room for the answer", {"input": {"prompt": "a b c d e f g h i", "max_tokens": 2040}}, 422,
     "too long for the model's 2048-token context"),
    ("output_only without waiting", {"input": {"prompt": "hi"}, "output_only": True, "wait_for_completion": False},
     400, "output_only=true requires wait_for_completion=true"),
]  # fmt: skip


@live
@pytest.mark.parametrize(("case", "body", "status", "says"), BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_a_bad_workflow_run_is_a_4xx_json_that_says_why(alice_api, fake_vllm, case, body, status, says):
    if isinstance(body, bytes):
        response = alice_api.post("/workflows/runs", content=body, headers={"Content-Type": "application/json"})
    else:
        response = alice_api.post("/workflows/runs", json=body)

    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert Conversation.objects.count() == 0


@live
@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("POST", {"title": "Plans\x00"}),
        ("POST", {"system_prompt": "Be brief.\x00"}),
        ("PATCH", {"title": "\x00"}),
        ("PATCH", {"system_prompt": "\x00Be brief."}),
    ],
)
def test_a_nul_character_in_a_conversation_is_refused_and_nothing_changes(alice_api, alice, method, body):
    # PostgreSQL's text cannot hold NUL: refused when it arrives, not by the database as a 500.
    conversation = conversation_of(alice, system_prompt="As it was")
    url = "/conversations" if method == "POST" else f"/conversations/{conversation.pk}"

    response = alice_api.request(method, url, json=body)

    assert response.status_code == 422, response.text
    assert "Null characters are not allowed" in response.json()["detail"]
    assert list(Conversation.objects.values_list("title", "system_prompt")) == [("Bob's secrets", "As it was")]


@live
@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("POST", "/conversations", {"temperature": 9}, 422),
        ("POST", "/conversations", {"title": "x" * 201}, 422),
        ("POST", "/conversations", {"owner": 2}, 422),
        ("PATCH", "/conversations/{c}", {"max_tokens": -1}, 422),
        ("GET", "/conversations?limit=0", None, 422),
        ("GET", "/conversations?limit=many", None, 422),
        ("GET", "/conversations?offset=99999999999999999999999", None, 422),
        ("GET", "/conversations/99999999999999999999999", None, 422),
        ("GET", "/conversations/abc", None, 422),
        ("GET", "/tasks/99999999999999999999999", None, 404),
        ("GET", "/tasks/not-a-task", None, 404),
        ("GET", "/conversations/{c}/messages/0/stream", None, 422),
    ],
)
def test_other_bad_requests_are_4xx_json(alice_api, alice, method, url, body, status):
    conversation = conversation_of(alice)
    response = alice_api.request(method, url.format(c=conversation.pk), json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


@live
def test_a_body_over_the_limit_is_413_json_whether_its_length_is_declared_or_not(alice_api, alice):
    conversation = conversation_of(alice)
    url = f"/conversations/{conversation.pk}/messages"
    too_big = json.dumps({"prompt": "x" * (1024 * 1024)}).encode()

    declared = alice_api.post(url, content=too_big, headers={"Content-Type": "application/json"})
    chunked = alice_api.post(url, content=iter([too_big[:1000], too_big[1000:]]))

    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json() == {"detail": "The request body is too large: at most 1048576 bytes are accepted."}
    assert Message.objects.count() == 0


# --- The schema and its docs --------------------------------------------------------------------


@live
def test_the_openapi_schema_and_its_docs_are_served_without_any_cdn(live_site):
    schema = httpx.get(f"{live_site.url}/api/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert "/api/conversations/{conversation_id}/messages" in schema["paths"]
    assert "/api/workflows/runs" in schema["paths"]
    assert {"TokenAuth", "SessionAuth"} <= set(schema["components"]["securitySchemes"])

    docs = httpx.get(f"{live_site.url}/api/docs")
    assert docs.status_code == 200
    assert "/static/ninja/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert httpx.get(f"{live_site.url}/static/ninja/swagger-ui-bundle.js").status_code == 200


@pytest.mark.django_db
def test_a_change_of_settings_racing_the_naming_keeps_the_models_title(client, alice, alice_token):
    from django.db.models.signals import pre_save

    conversation = Conversation.objects.create(owner=alice, title="First words")

    def named_meanwhile(sender, instance, **kwargs):
        Conversation.objects.filter(pk=instance.pk).update(title="Named by the model")

    pre_save.connect(named_meanwhile, sender=Conversation)
    try:
        response = client.patch(
            f"/api/conversations/{conversation.pk}",
            {"temperature": 0.3, "system_prompt": "Be brief."},
            content_type="application/json",
            headers={"Authorization": f"Bearer {alice_token}"},
        )
    finally:
        pre_save.disconnect(named_meanwhile, sender=Conversation)

    assert response.status_code == 200, response.content
    conversation.refresh_from_db()
    assert conversation.title == "Named by the model" and not conversation.title_set_by_person
    assert conversation.temperature == 0.3 and conversation.system_prompt == "Be brief."
