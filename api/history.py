"""The REST API's routes over a person's whole history: search, export and import.

The same domain as the page's (chat/search.py, chat/exports.py, chat/imports.py), with the same
results. Their schemas live here, beside the only routes that use them.
"""

from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from ninja import File, Router, Schema, Status
from ninja.files import UploadedFile

# The function itself: to a type checker `ninja.Query` is an Annotated alias, which cannot be called.
from ninja.params.functions import Query
from pydantic import Field

from api.auth import AuthenticatedRequest
from api.schemas import ERRORS, MAX_ID, path_id
from chat import exports, imports, ownership, search
from chat.models import Conversation

router = Router()


class PartOut(Schema):
    text: str
    match: bool = Field(description="Whether this part is what was searched for.")


class ConversationHitOut(Schema):
    conversation_id: int
    title: list[PartOut] = Field(description="The title, in parts: the matches marked.")
    updated_at: datetime
    url: str = Field(description="The conversation on the chat page.")

    @staticmethod
    def resolve_url(hit: search.ConversationHit) -> str:
        return reverse("chat:conversation", args=[hit.conversation_id])


class MessageHitOut(Schema):
    conversation_id: int
    conversation_title: str
    message_id: int
    role: str
    created_at: datetime
    snippet: list[PartOut] = Field(description="A line of the message around the first match, in parts.")
    url: str = Field(description="The chat page, opened at this message.")

    @staticmethod
    def resolve_url(hit: search.MessageHit) -> str:
        return reverse("chat:conversation", args=[hit.conversation_id]) + f"#message-{hit.message_id}"


class SearchOut(Schema):
    terms: list[str] = Field(description='What was searched for: the words, and each "quoted phrase".')
    conversations: list[ConversationHitOut] = Field(description="Conversations whose title matches, newest first.")
    messages: list[MessageHitOut] = Field(description="Messages that hold every term, newest first.")
    next_before: int | None = Field(description="`before` for the next page of messages; null on the last.")


@router.get("/search", response={200: SearchOut, **ERRORS}, tags=["search"])
def search_history(
    request: AuthenticatedRequest,
    q: str = Query(
        ...,
        max_length=search.MAX_QUERY_CHARS,
        description="Words (all must be in a title or message, in any case; any part of a word, Korean too) "
        'or "quoted phrases".',
    ),
    limit: int = Query(20, ge=1, le=search.MAX_RESULTS),
    before: int | None = Query(None, ge=1, le=MAX_ID, description="Only messages older than this message id."),
) -> Status[dict[str, Any]] | dict[str, Any]:
    """Search the titles and messages of your conversations, as the chat page's search box does."""
    try:
        results = search.search(request.auth, q, limit=limit, before=before)
    except search.InvalidQuery as exc:
        return Status(
            422, {"detail": str(exc), "errors": [{"loc": ["query", "q"], "msg": str(exc), "type": "invalid_query"}]}
        )
    return {
        "terms": results.query.terms,
        "conversations": results.conversations,
        "messages": results.messages,
        "next_before": results.messages[-1].message_id if len(results.messages) == limit else None,
    }


def _download(other_type: str, other_schema: dict[str, str]) -> dict[str, object]:
    """The OpenAPI response of an export: the JSON file, or another kind of it."""
    content = {"application/json": {"schema": {"type": "object"}}, other_type: {"schema": other_schema}}
    return {"responses": {200: {"description": "The file, as an attachment.", "content": content}}}


FILE_RESPONSE = _download("text/markdown", {"type": "string"})
HISTORY_RESPONSE = _download("application/zip", {"type": "string", "format": "binary"})


@router.get(
    "/conversations/{conversation_id}/export",
    response={200: None, **ERRORS},
    openapi_extra=FILE_RESPONSE,
    tags=["export and import"],
)
def export_conversation(
    request: AuthenticatedRequest,
    conversation_id: int = path_id(),
    format: str = Query("json", pattern="^(json|markdown)$", description="json (importable) or markdown (to read)."),
) -> HttpResponseBase:
    """One conversation as this site's JSON export (which `POST /api/import` reads back) or as Markdown."""
    conversation = ownership.conversation_or_404(request.auth, conversation_id)
    if format == "markdown":
        return exports.download(
            exports.as_markdown(conversation), "text/markdown; charset=utf-8", exports.filename(conversation, "md")
        )
    content = exports.as_json(Conversation.objects.filter(pk=conversation.pk))
    return exports.download(content, "application/json", exports.filename(conversation, "json"))


@router.get("/export", response={200: None, **ERRORS}, openapi_extra=HISTORY_RESPONSE, tags=["export and import"])
def export_history(
    request: AuthenticatedRequest,
    format: str = Query("json", pattern="^(json|zip)$", description="json, or zip: the JSON with the prompts' files."),
) -> HttpResponseBase:
    """All your conversations with their messages, newest first, as one JSON file (streamed as it is read),
    or as a zip of that JSON (conversations.json) and the prompts' files themselves (files/<id>)."""
    if format == "zip":
        archive = exports.as_zip(Conversation.objects.owned_by(request.auth))
        return exports.download(archive, "application/zip", exports.filename(None, "zip"))
    chunks = exports.json_chunks(Conversation.objects.owned_by(request.auth))
    return exports.download(exports.in_thread(chunks), "application/json", exports.filename(None, "json"))


class ImportedOut(Schema):
    id: int
    title: str
    messages: int
    left_out: dict[str, int] = Field(description="Messages of this conversation not imported, by reason.")


class RefusedOut(Schema):
    where: str = Field(description="Where the conversation is in the file.")
    title: str
    reason: str


class ImportOut(Schema):
    format: str = Field(description="chatsite (this site's export) or chatgpt (ChatGPT's data export)")
    messages: int = Field(alias="message_count", description="How many messages were imported, in all.")
    imported: list[ImportedOut]
    refused: list[RefusedOut] = Field(description="Conversations not imported: they had no text.")
    summary: str


@router.post("/import", response={201: ImportOut, **ERRORS}, tags=["export and import"])
def import_history(
    request: AuthenticatedRequest, file: File[UploadedFile]
) -> Status[imports.ImportReport] | Status[dict[str, Any]]:
    """Add the conversations of a file to yours: this site's JSON export, or ChatGPT's data export
    (its zip, or the `conversations.json` inside), up to CHAT_IMPORT_MAX_BYTES.

    All or nothing: if anything in the file is wrong, nothing is imported and the answer is 422 with
    every problem and where it is (`errors[].loc`: the path in the file). What the file holds that
    this site has no place for (other branches, tool calls, images...) is left out and counted.
    """
    try:
        with file:
            report = imports.import_file(request.auth, file)
    except imports.ImportTooLarge as exc:
        return Status(413, {"detail": exc.problems[0].message})
    except imports.ImportRefused as exc:
        errors = [{"loc": ["file", *problem.loc], "msg": problem.message, "type": "import"} for problem in exc.problems]
        return Status(422, {"detail": exc.summary, "errors": errors})
    return Status(201, report)


def malformed_upload(request: HttpRequest, exc: MultiPartParserError | type[MultiPartParserError]) -> HttpResponse:
    """A body that claims to be multipart/form-data and is not: the client's mistake, said as JSON."""
    # ninja's type lets a handler be given the class too; it passes what was raised, and a raised
    # class is always made an instance by Python.
    assert isinstance(exc, MultiPartParserError)
    return JsonResponse({"detail": f"The upload cannot be read: {exc}"}, status=400)
