"""model-compose's workflow routes: the seed's calls, unchanged but for a token, against the live site."""

import subprocess

import httpx
import pytest

from chat.models import Conversation, Message
from tests.sse import sse_frames
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# The seed README's call, byte for byte.
SEED_BODY = """{
       "input": {
         "prompt": "Explain the benefits of local AI models",
         "temperature": 0.7
       }
     }"""


def poll(api: httpx.Client, task_id: str, until) -> dict:
    """The task's state once `until(state)` holds."""

    def reached() -> dict | None:
        state = api.get(f"/tasks/{task_id}").json()
        return state if until(state) else None

    return wait_for(reached, what=f"task {task_id} to get there")


def test_the_seeds_curl_prints_the_answer_as_sse_text_and_saves_it(live_site, alice, alice_token, fake_vllm):
    fake_vllm.reply = ["Privacy", ",", " no", " per-token", " fees."]
    command = [
        "curl", "-sS", "-N", "-X", "POST", f"{live_site.url}/api/workflows/runs",
        "-H", "Content-Type: application/json",
        "-H", f"Authorization: Bearer {alice_token}",
        "-d", SEED_BODY,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)

    # sse-text, as the seed prints it: a `data:` frame a delta (several deltas in one when the
    # client is behind, chat/running_turn.py), which a reader puts together.
    frames = result.stdout.split("\n\n")
    assert frames[-1] == "" and all(frame.startswith("data: ") for frame in frames[:-1]), result.stdout
    assert "".join(frame.removeprefix("data: ") for frame in frames[:-1]) == "Privacy, no per-token fees."
    sent = fake_vllm.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "Explain the benefits of local AI models"}]
    assert sent["temperature"] == 0.7 and sent["max_tokens"] == 512 and sent["stream"] is True
    conversation = Conversation.objects.get(owner=alice)
    assert conversation.title == "Explain the benefits of local AI models"
    assert [(m.role, m.content, m.status) for m in conversation.messages.all()] == [
        ("user", "Explain the benefits of local AI models", "complete"),
        ("assistant", "Privacy, no per-token fees.", "complete"),
    ]


def test_a_chunk_with_line_breaks_is_one_data_line_per_line(alice_api, fake_vllm):
    fake_vllm.reply = ["First line\nsecond", "\n\n", "after a blank line\r\nend"]
    fake_vllm.token_delay = 0.3  # each chunk its own event: a follower that joins late gets the text so far as one
    with alice_api.stream("POST", "/workflows/runs", json={"input": {"prompt": "Lines"}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()

    assert raw.startswith("data: First line\ndata: second\n\ndata: \ndata: \ndata: \n\n")
    chunks = [data for _, data in sse_frames(raw.split("\n"))]
    assert chunks == ["First line\nsecond", "\n\n", "after a blank line\nend"]


def test_max_tokens_and_top_p_reach_vllm_and_the_conversation(alice_api, alice, fake_vllm):
    body = {"input": {"prompt": "Short", "temperature": 0.1, "max_tokens": 3, "top_p": 0.5}, "output_only": True}
    with alice_api.stream("POST", "/workflows/runs", json=body) as response:
        response.read()
    assert fake_vllm.requests[-1]["max_tokens"] == 3
    assert fake_vllm.requests[-1]["top_p"] == 0.5
    conversation = Conversation.objects.get(owner=alice)
    assert (conversation.temperature, conversation.max_tokens, conversation.top_p) == (0.1, 3, 0.5)


def test_without_waiting_a_pending_task_comes_back_and_can_be_polled_to_completion(alice_api, alice, fake_vllm):
    fake_vllm.reply = ["Done", " later."]
    fake_vllm.token_delay = 0.05

    started = alice_api.post("/workflows/runs", json={"input": {"prompt": "Later"}, "wait_for_completion": False})

    assert started.status_code == 200
    assert started.json() == {"task_id": started.json()["task_id"], "status": "pending"}
    task_id = started.json()["task_id"]
    state = poll(alice_api, task_id, lambda s: s["status"] != "processing")
    # The model is the one vLLM says it serves: the site was given no name for it.
    assert state == {
        "task_id": task_id,
        "status": "completed",
        "output": "Done later.",
        "error": None,
        "model": "qwen2-7b-instruct",
    }
    assert alice_api.get(f"/tasks/{task_id}", params={"output_only": True}).json() == "Done later."
    assert Message.objects.get(pk=int(task_id)).conversation.owner == alice


def test_a_task_being_processed_says_so_and_output_only_answers_202(alice_api, fake_vllm):
    fake_vllm.reply = ["so", " far", " and", " more"]
    fake_vllm.fault, fake_vllm.fault_after = "stall", 2
    task_id = alice_api.post("/workflows/runs", json={"input": {"prompt": "x"}, "wait_for_completion": False}).json()[
        "task_id"
    ]
    assert fake_vllm.wait_for(lambda: fake_vllm.running == 1)

    assert alice_api.get(f"/tasks/{task_id}").json()["status"] == "processing"
    # The text so far, live: no checkpoint comes while vLLM stalls.
    assert poll(alice_api, task_id, lambda s: s["output"] == "so far")["status"] == "processing"
    only = alice_api.get(f"/tasks/{task_id}", params={"output_only": True})
    assert only.status_code == 202 and only.json()["status"] == "processing"
    assert alice_api.post(f"/tasks/{task_id}/cancel").json()["output"] == "so far"


def test_cancel_stops_a_running_task_and_closes_the_request_to_vllm(alice_api, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    task_id = alice_api.post("/workflows/runs", json={"input": {"prompt": "Go"}, "wait_for_completion": False}).json()[
        "task_id"
    ]
    poll(alice_api, task_id, lambda s: s["output"])

    cancelled = alice_api.post(f"/tasks/{task_id}/cancel")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["output"]
    assert fake_vllm.wait_for_disconnect()
    assert alice_api.get(f"/tasks/{task_id}").json()["status"] == "cancelled"
    assert Message.objects.get(pk=int(task_id)).status == Message.Status.STOPPED
    only = alice_api.get(f"/tasks/{task_id}", params={"output_only": True})
    assert only.status_code == 409 and "cancelled" in only.json()["detail"]
    # Cancelling what has ended changes nothing.
    assert alice_api.post(f"/tasks/{task_id}/cancel").json() == cancelled.json() | {
        "output": Message.objects.get(pk=int(task_id)).content
    }


def test_a_task_that_fails_is_failed_with_vllms_error(alice_api, fake_vllm):
    fake_vllm.fault = "server_error"
    task_id = alice_api.post("/workflows/runs", json={"input": {"prompt": "x"}, "wait_for_completion": False}).json()[
        "task_id"
    ]
    state = poll(alice_api, task_id, lambda s: s["status"] not in ("pending", "processing"))
    assert state["status"] == "failed"
    assert "The model server failed (500)" in state["error"]


def test_a_run_while_vllm_is_down_is_a_503_that_says_so(alice_api, alice, fake_vllm):
    fake_vllm.fault = "refuse"
    response = alice_api.post("/workflows/runs", json={"input": {"prompt": "Anyone there?"}})
    assert response.status_code == 503
    assert "not reachable" in response.json()["detail"]
    assert Message.objects.get(role="assistant").status == Message.Status.ERROR


def test_a_run_that_vllm_refuses_is_a_502(alice_api, fake_vllm):
    fake_vllm.fault = "model_not_found"  # vLLM is up, and says no
    response = alice_api.post("/workflows/runs", json={"input": {"prompt": "Which model?"}})
    assert response.status_code == 502
    assert "does not serve a model" in response.json()["detail"]


def test_a_failure_mid_answer_ends_the_stream_with_an_error_event(alice_api, fake_vllm):
    fake_vllm.reply = ["Half", " an", " answer"]
    fake_vllm.fault, fake_vllm.fault_after = "error_frame", 2
    with alice_api.stream("POST", "/workflows/runs", json={"input": {"prompt": "Break"}}) as response:
        frames = list(sse_frames(response.iter_lines()))
    # One frame a delta, or several deltas in one for a client behind (chat/running_turn.py): the text is whole.
    assert {name for name, _ in frames[:-1]} == {"message"}
    assert "".join(data for _, data in frames[:-1]) == "Half an"
    name, data = frames[-1]
    assert name == "error" and "EngineCore encountered an issue" in data


def test_a_client_that_leaves_a_streamed_run_stops_it(alice_api, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    with alice_api.stream("POST", "/workflows/runs", json={"input": {"prompt": "Go on"}}) as response:
        next(sse_frames(response.iter_lines()))
    assert fake_vllm.wait_for_disconnect()
    wait_for(lambda: Message.objects.get(role="assistant").status == Message.Status.STOPPED)


def test_the_one_workflow_is_listed_with_its_input_schema(alice_api):
    [listed] = alice_api.get("/workflows").json()
    assert listed["workflow_id"] == "__default__"
    assert listed["title"] == "Chat with vLLM server"
    assert listed["default"] is True
    inputs = {variable["name"]: variable for variable in listed["input"]}
    assert inputs["prompt"]["type"] == "text" and inputs["prompt"]["required"] is True
    assert inputs["temperature"]["type"] == "number" and inputs["temperature"]["default"] == 0.7
    assert listed["output"] == [
        {"name": None, "type": "text", "subtype": None, "format": "sse-text", "default": None, "required": False}
    ]
    assert alice_api.get("/workflows/__default__/schema").json() == listed
    assert alice_api.get("/workflows/other/schema").status_code == 404
    # `workflow_id` names it too.
    with alice_api.stream(
        "POST", "/workflows/runs", json={"workflow_id": "__default__", "input": {"prompt": "hi"}}
    ) as response:
        assert response.status_code == 200


def test_another_users_task_is_not_found(alice_api, bob_api, fake_vllm):
    task_id = alice_api.post(
        "/workflows/runs", json={"input": {"prompt": "Mine"}, "wait_for_completion": False}
    ).json()["task_id"]
    assert bob_api.get(f"/tasks/{task_id}").status_code == 404
    assert bob_api.post(f"/tasks/{task_id}/cancel").status_code == 404
    poll(alice_api, task_id, lambda s: s["status"] == "completed")
