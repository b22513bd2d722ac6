"""Files on every door of the live site (issue 21): a file uploaded and sent with a prompt reaches
the model (the fake vLLM's requests show what it received) from the page, the REST API, the
workflow run and /v1/chat/completions; the thread shows it, a reload too; bad input is a clear
refusal, never a 500."""

import base64
import re
import uuid

import httpx
import pytest

from chat.models import Attachment, Message
from tests.accounts import login
from tests.site_server import csrf_headers
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BUDGET = "The budget for the Busan trip is 3,000,000 won."
ANSWER = re.compile(r'<article class="message assistant [\w ]+" id="message-(\d+)"')


@pytest.fixture
def browser(live_site, alice):
    with httpx.Client(base_url=live_site.url, timeout=15) as client:
        login(client, "alice")
        yield client


def model_read(fake_vllm) -> str:
    wait_for(lambda: fake_vllm.requests, what="the prompt to reach the model")
    return fake_vllm.requests[-1]["messages"][-1]["content"]


def ended(answer_pk: int) -> Message:
    return wait_for(
        lambda: Message.objects.filter(pk=answer_pk).exclude(status=Message.Status.STREAMING).first(),
        what="the answer to end",
    )


def test_a_file_sent_from_the_page_reaches_the_model_and_stays_in_the_thread(browser, fake_vllm):
    uploaded = browser.post("/files", files={"file": ("budget.txt", BUDGET.encode())}, headers=csrf_headers(browser))
    assert uploaded.status_code == 201, uploaded.text
    file_id = uploaded.json()["id"]

    sent = browser.post(
        "/c/new/send",
        data={"prompt": "How much is the budget?", "files": [file_id]},
        headers={**csrf_headers(browser), "HX-Request": "true"},
    )
    assert sent.status_code == 200, sent.text
    assert f'<a href="/files/{file_id}/" download>budget.txt</a>' in sent.text
    answer = ended(int(ANSWER.findall(sent.text)[-1]))
    assert (
        model_read(fake_vllm) == f"[File: budget.txt]\n{BUDGET}\n[End of file: budget.txt]\n\nHow much is the budget?"
    )

    page = browser.get(f"/c/{answer.conversation_id}/")
    assert '<ul class="prompt-files"' in page.text and f'href="/files/{file_id}/"' in page.text
    assert browser.get(f"/files/{file_id}/").content == BUDGET.encode()
    assert file_id not in browser.get("/files/unsent").text  # sent: no longer a chip to send


@pytest.mark.parametrize(
    "files, status, says",
    [
        (["not-an-id"], 400, "is not a file id"),
        (["00000000-0000-0000-0000-000000000001"], 404, "There is no file"),
    ],
)
def test_a_send_naming_a_bad_file_is_refused_and_saves_nothing(browser, fake_vllm, files, status, says):
    response = browser.post(
        "/c/new/send",
        data={"prompt": "Read it", "files": files},
        headers={**csrf_headers(browser), "HX-Request": "true"},
    )
    assert response.status_code == status and says in response.json()["error"]
    assert not Message.objects.exists() and fake_vllm.requests == []


def test_more_files_than_a_prompt_may_bring_are_refused(browser, fake_vllm, alice):
    ids = []
    for n in range(6):  # CHAT_FILES_PER_PROMPT is 5
        response = browser.post("/files", files={"file": (f"{n}.txt", b"note")}, headers=csrf_headers(browser))
        ids.append(response.json()["id"])
    response = browser.post(
        "/c/new/send",
        data={"prompt": "Read them", "files": ids},
        headers={**csrf_headers(browser), "HX-Request": "true"},
    )
    assert response.status_code == 400 and "at most 5 files" in response.json()["error"]
    assert Attachment.objects.filter(owner=alice, message=None).count() == 6


def test_the_rest_api_and_the_workflow_run_send_files_by_id(alice_api, fake_vllm):
    file_id = alice_api.post("/files", files={"file": ("budget.md", f"# Budget\n{BUDGET}\n".encode())}).json()["id"]
    conversation = alice_api.post("/conversations", json={}).json()["id"]
    turn = alice_api.post(f"/conversations/{conversation}/messages", json={"prompt": "Budget?", "files": [file_id]})
    assert turn.status_code == 200, turn.text
    assert BUDGET in model_read(fake_vllm)
    assert Attachment.objects.get(pk=file_id).message_id == turn.json()["prompt"]["id"]
    [described] = turn.json()["prompt"]["files"]
    assert described["id"] == file_id and described["name"] == "budget.md" and described["kind"] == "markdown"
    assert turn.json()["answer"]["files_cut"] == []
    shown = alice_api.get(f"/conversations/{conversation}").json()["messages"]
    assert [file["id"] for file in shown[0]["files"]] == [file_id]
    regenerated = alice_api.post(
        f"/conversations/{conversation}/messages/{turn.json()['answer']['id']}/regenerate", json={}
    )
    assert regenerated.status_code == 200 and regenerated.json()["prompt"]["files"][0]["id"] == file_id
    assert BUDGET in model_read(fake_vllm)

    # The same file again, for a new conversation: the prompt keeps a copy of its own.
    run = alice_api.post("/workflows/runs", json={"input": {"prompt": "Budget?", "files": [file_id]}})
    assert run.status_code == 200, run.text
    assert BUDGET in model_read(fake_vllm)
    assert Attachment.objects.filter(name="budget.md").count() == 2

    bad = alice_api.post(f"/conversations/{conversation}/messages", json={"prompt": "Hi", "files": ["x"]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][-2:] == ["files", "0"]
    bad = alice_api.post(f"/conversations/{conversation}/messages", json={"prompt": "Hi", "files": "x"})
    assert bad.status_code == 422
    six = [str(uuid.uuid4()) for _ in range(6)]  # CHAT_FILES_PER_PROMPT is 5
    bad = alice_api.post(f"/conversations/{conversation}/messages", json={"prompt": "Hi", "files": six})
    assert bad.status_code == 422 and "at most 5" in bad.json()["detail"]
    unknown = alice_api.post(f"/conversations/{conversation}/messages", json={"prompt": "Hi", "files": six[:1]})
    assert unknown.status_code == 404 and "There is no file" in unknown.json()["detail"]


def test_openai_file_parts_by_data_and_by_id_reach_the_model(live_site, alice_token, alice_api, fake_vllm):
    v1 = httpx.Client(base_url=f"{live_site.url}/v1", headers={"Authorization": f"Bearer {alice_token}"}, timeout=15)
    data = "data:text/plain;base64," + base64.b64encode(BUDGET.encode()).decode()
    question = {"type": "text", "text": "How much is the budget?"}
    with v1:
        by_data = v1.post(
            "/chat/completions",
            json={
                "model": fake_vllm.served_model_name,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "file", "file": {"filename": "b.txt", "file_data": data}}, question],
                    }
                ],
            },
        )
        assert by_data.status_code == 200, by_data.text
        assert model_read(fake_vllm) == f"[File: b.txt]\n{BUDGET}\n[End of file: b.txt]\n\nHow much is the budget?"
        assert Attachment.objects.get(name="b.txt").message is not None

        file_id = alice_api.post("/files", files={"file": ("c.txt", BUDGET.encode())}).json()["id"]
        by_id = v1.post(
            "/chat/completions",
            json={
                "model": fake_vllm.served_model_name,
                "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": file_id}}, question]}],
            },
        )
        assert by_id.status_code == 200, by_id.text
        assert model_read(fake_vllm).startswith("[File: c.txt]\n" + BUDGET)

        for part, status in [
            ({"file_data": "not base64!"}, 400),
            ({"file_id": "nonsense"}, 400),
            ({}, 400),
            ({"file_data": base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(300)).decode(), "filename": "a.png"}, 415),
        ]:
            refused = v1.post(
                "/chat/completions",
                json={
                    "model": fake_vllm.served_model_name,
                    "messages": [{"role": "user", "content": [{"type": "file", "file": part}, question]}],
                },
            )
            assert refused.status_code == status, (part, refused.text)
            assert refused.json()["error"]["message"]


def test_a_file_brought_to_a_refused_openai_request_is_not_kept(live_site, alice_token, fake_vllm):
    data = "data:text/plain;base64," + base64.b64encode(BUDGET.encode()).decode()
    brought = {"type": "file", "file": {"filename": "b.txt", "file_data": data}}
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(300)).decode()
    refused_part = {"type": "file", "file": {"filename": "a.png", "file_data": png}}
    question = {"type": "text", "text": "How much is the budget?"}
    with httpx.Client(
        base_url=f"{live_site.url}/v1", headers={"Authorization": f"Bearer {alice_token}"}, timeout=15
    ) as v1:
        for model, content, status in [
            ("gpt-4o", [brought, question], 404),  # the turn is refused: no engine serves that model
            (fake_vllm.served_model_name, [brought, refused_part, question], 415),  # a later part is refused
        ]:
            refused = v1.post(
                "/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}]}
            )
            assert refused.status_code == status, refused.text
            # Its id was never given to the client: kept, it would count toward alice's total for a day.
            assert not Attachment.objects.exists()
    assert fake_vllm.requests == []
