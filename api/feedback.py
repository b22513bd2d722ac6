"""The REST API's door to feedback on answers (chat/feedback.py): the page's thumbs and comment."""

import re
from datetime import datetime
from typing import Literal

from django.http import Http404
from ninja import Router, Schema
from pydantic import Field, field_validator

from api.auth import AuthenticatedRequest
from api.schemas import ERRORS, path_id
from chat import feedback, ownership
from chat.models import Feedback

router = Router()
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class FeedbackIn(Schema):
    rating: Literal["up", "down"]
    comment: str = Field("", max_length=Feedback.COMMENT_MAX, json_schema_extra={"pattern": r"^[^\u0000]*$"})

    @field_validator("comment")
    @classmethod
    def storable(cls, comment: str) -> str:
        # PostgreSQL's text cannot hold NUL, nor UTF-8 a lone surrogate (JSON reads "\ud800" without complaint).
        if UNSTORABLE.search(comment):
            raise ValueError("A comment cannot hold a NUL character or a lone surrogate.")
        return comment


class FeedbackOut(Schema):
    rating: Literal["up", "down"]
    comment: str
    updated_at: datetime


def _out(given: Feedback) -> FeedbackOut:
    return FeedbackOut(rating=feedback.rating_name(given.rating), comment=given.comment, updated_at=given.updated_at)


ANSWER = "/conversations/{conversation_id}/messages/{message_id}/feedback"


@router.put(ANSWER, response={200: FeedbackOut, **ERRORS}, tags=["messages"])
async def give_feedback(
    request: AuthenticatedRequest,
    data: FeedbackIn,
    conversation_id: int = path_id(),
    message_id: int = path_id(),
) -> FeedbackOut:
    """Thumbs up or down on an answer, with an optional comment: one per person and answer, replaced
    by the next."""
    answer = await ownership.aanswer_or_404(request.auth, message_id, conversation_pk=conversation_id)
    return _out(await feedback.give(request.auth, answer, data.rating, data.comment))


@router.get(ANSWER, response={200: FeedbackOut, **ERRORS}, tags=["messages"])
async def read_feedback(
    request: AuthenticatedRequest,
    conversation_id: int = path_id(),
    message_id: int = path_id(),
) -> FeedbackOut:
    """The caller's feedback on an answer; 404 if none was given."""
    answer = await ownership.aanswer_or_404(request.auth, message_id, conversation_pk=conversation_id)
    given = await feedback.of(request.auth, answer)
    if given is None:
        raise Http404("No feedback on this answer yet.")
    return _out(given)
