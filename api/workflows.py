"""model-compose's HTTP API for the seed's one workflow, "Chat with vLLM server".

The seed's calls work unchanged (with a token added): `POST /api/workflows/runs` with
`{"input": {"prompt": ..., "temperature": ...}}` streams the answer as model-compose streams an
`sse-text` output, one `data:` line per line of each chunk and a blank line after it. Each run is a
turn of a new conversation of the caller's, so it lands in their chat history.

Where this differs from model-compose, it is to keep the seed's README true:
- The streamed answer needs no `output_only: true` (model-compose refuses a streamed output
  without it); the stream is the same either way.
- A run that fails before any text (vLLM down) is an HTTP error (503, or 502 if vLLM answered but
  failed), `{"detail": ...}`; one that fails later ends its stream with an `event: error` frame,
  which EventSource clients tell from the text. A run over the caller's limits on answers is 429,
  with `Retry-After` (chat/limits.py); one naming a `model` no engine serves now is 404.
- A task is the run's answer: its id is the answer message's id, its state is the message's status
  (`cancelled` when stopped), and its `output` is the text so far.
A client that goes away from a streamed run stops it, as model-compose closes the model's stream
when its consumer does.
"""

import re
from collections.abc import AsyncGenerator, AsyncIterator

from django.conf import settings
from django.http import Http404, HttpRequest, StreamingHttpResponse
from ninja import Router
from ninja.errors import HttpError

from api import delivery
from api.auth import AuthenticatedRequest
from api.schemas import (
    ERRORS,
    MAX_ID,
    STARTS_AN_ANSWER,
    ErrorOut,
    TaskOut,
    TaskStarted,
    WorkflowOut,
    WorkflowRunIn,
    WorkflowVariable,
)
from chat import attachments, ownership, sse, turns
from chat.context import ContextTooLong, check_prompt_fits
from chat.models import Conversation, Message
from chat.turns import TurnEnded, TurnEvent
from engine import vllm_client
from engine.vllm_client import TextDelta

router = Router(tags=["model-compose workflows"])

WORKFLOW_ID = "__default__"  # model-compose's id for the one workflow of a `workflow:` block
SSE_TEXT = {
    "responses": {
        200: {
            "description": "With wait_for_completion (the default): the answer as an sse-text stream, one "
            "`data:` line per line of each chunk. Without: the task to poll.",
            "content": {
                "text/event-stream": {
                    # One event (OpenAPI 3.1): a chunk of text, or the error that ended the answer.
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"event": {"enum": ["message", "error"]}, "data": {"type": "string"}},
                    }
                }
            },
            "links": {
                "task": {
                    "operationId": "api_workflows_task_state",
                    "parameters": {"task_id": "$response.body#/task_id"},
                    "description": "Without wait_for_completion: the task's state.",
                },
                "cancel": {
                    "operationId": "api_workflows_cancel_task",
                    "parameters": {"task_id": "$response.body#/task_id"},
                },
            },
        }
    }
}
TASK_STATUS: dict[str, str] = {  # looked up by a Message's status, which reads as a plain str
    Message.Status.STREAMING: "processing",
    Message.Status.COMPLETE: "completed",
    Message.Status.STOPPED: "cancelled",
    Message.Status.ERROR: "failed",
    Message.Status.INTERRUPTED: "failed",
}


def workflow() -> WorkflowOut:
    return WorkflowOut(
        workflow_id=WORKFLOW_ID,
        title="Chat with vLLM server",
        description=f"Generate text responses using vLLM server ({vllm_client.known_model().display_name})",
        default=True,
        input=[
            WorkflowVariable(name="prompt", type="text", required=True),
            WorkflowVariable(name="temperature", type="number", default=settings.CHAT_DEFAULT_TEMPERATURE),
            # Not in the seed: one of the models /v1/models lists; the default model when not given.
            WorkflowVariable(name="model", type="string", default=""),
            # Not in the seed either: ids of files from POST /api/files, which the model reads.
            WorkflowVariable(name="files", type="array", default=[]),
        ],
        output=[WorkflowVariable(name=None, type="text", format="sse-text")],
    )


@router.get("/workflows", response={200: list[WorkflowOut], **ERRORS})
def list_workflows(request: HttpRequest, include_schema: bool = True) -> list[WorkflowOut]:
    """The one workflow, with its input and output (always: `include_schema` is accepted for model-compose)."""
    return [workflow()]


@router.get("/workflows/{workflow_id}/schema", response={200: WorkflowOut, **ERRORS})
def workflow_schema(request: HttpRequest, workflow_id: str) -> WorkflowOut:
    if workflow_id != WORKFLOW_ID:
        raise HttpError(404, f"Workflow '{workflow_id}' not found.")
    return workflow()


@router.post(
    "/workflows/runs",
    response={200: TaskStarted, 502: ErrorOut, 503: ErrorOut, **STARTS_AN_ANSWER},
    openapi_extra=SSE_TEXT,
)
async def run_workflow(request: AuthenticatedRequest, run: WorkflowRunIn) -> TaskStarted | StreamingHttpResponse:
    """Run "Chat with vLLM server" as a turn of a new conversation of the caller's."""
    if run.workflow_id not in (None, WORKFLOW_ID):
        raise HttpError(404, f"Workflow '{run.workflow_id}' not found.")
    if run.output_only and not run.wait_for_completion:
        raise HttpError(400, "output_only=true requires wait_for_completion=true.")
    files = await attachments.named_by(request.auth, run.input.files)
    conversation = Conversation(owner=request.auth)
    run.input.apply_to(conversation)
    try:
        await check_prompt_fits(
            system_prompt="", prompt=run.input.prompt, max_tokens=conversation.max_tokens, model=conversation.model
        )
    except ContextTooLong as exc:
        raise HttpError(422, str(exc)) from None
    _, answer = await turns.start_turn(conversation, run.input.prompt, files=files)
    if not run.wait_for_completion:
        return TaskStarted(task_id=str(answer.pk), status="pending")
    return await delivery.stream(answer, _sse_text)


async def _sse_text(events: AsyncIterator[TurnEvent]) -> AsyncGenerator[bytes]:
    async for event in events:
        if isinstance(event, TextDelta):
            yield sse.frame(event.text)
        elif isinstance(event, TurnEnded) and event.message.has_failed:
            yield sse.frame(event.message.error, "error")


async def _owned_task(request: AuthenticatedRequest, task_id: str) -> Message:
    # A task id is a string in model-compose: one that is not an answer's id is simply not found.
    if not re.fullmatch(r"[0-9]{1,19}", task_id) or int(task_id) > MAX_ID:
        raise Http404
    return await ownership.aanswer_or_404(request.auth, int(task_id))


def task(answer: Message) -> TaskOut:
    """The task of an answer as `turns.current` or `turns.stop_turn` gave it (settled: an answer
    whose worker died is interrupted, so "failed", not "processing" for ever)."""
    status = TASK_STATUS[answer.status]
    error = answer.error or None if status == "failed" else None
    return TaskOut(
        task_id=str(answer.pk), status=status, output=answer.content or None, error=error, model=answer.model_name
    )


@router.get("/tasks/{task_id}", response={200: TaskOut | str, 202: TaskOut, 409: ErrorOut, **ERRORS})
async def task_state(
    request: AuthenticatedRequest, task_id: str, output_only: bool = False
) -> TaskOut | tuple[int, TaskOut] | str:
    """The run's state; with `output_only`, the answer's text alone once completed (202 until then)."""
    state = task(await turns.current(await _owned_task(request, task_id)))
    if not output_only:
        return state
    if state.status in ("pending", "processing"):
        return 202, state
    if state.status != "completed":
        raise HttpError(409, state.error or f"The task was {state.status}.")
    return state.output or ""


@router.post("/tasks/{task_id}/cancel", response={200: TaskOut, **ERRORS})
async def cancel_task(request: AuthenticatedRequest, task_id: str) -> TaskOut:
    """Stop the run's answer; its text so far is kept. A task that has ended is left as it is."""
    return task(await turns.stop_turn(await _owned_task(request, task_id)))
