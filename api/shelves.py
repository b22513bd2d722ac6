"""The REST API's folders, and where a conversation sits: pinned, in a folder, archived.

The same rules as the page's (chat/folders.py). Another person's folder is a 404, as their
conversations are. A conversation is pinned, filed or archived through `PATCH /conversations/{id}`
(`pinned`, `folder_id`, `archived`), which calls `change` here.
"""

from datetime import datetime
from typing import Annotated

from ninja import Router, Schema, Status
from pydantic import ConfigDict, Field

from api.auth import AuthenticatedRequest
from api.errors import ApiError
from api.schemas import CONFLICTS, ERRORS, MAX_ID, ConversationChange, path_id
from chat import folders
from chat.models import Conversation, ConversationQuerySet, Folder, Someone

router = Router(tags=["folders"])

FolderName = Annotated[str, Field(min_length=1, max_length=folders.FOLDER_NAME_LENGTH, pattern=r"\S")]


class FolderIn(Schema):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: FolderName


class FolderOut(Schema):
    id: int
    name: str
    created_at: datetime


class ListFilter(Schema):
    """Which conversations `GET /api/conversations` lists."""

    archived: bool = Field(False, description="True: the archived ones instead.")
    pinned: bool | None = Field(None, description="Only the pinned ones (true), or only the others (false).")
    folder_id: int | None = Field(None, ge=1, le=MAX_ID, description="Only those in this folder.")

    def apply(self, conversations: ConversationQuerySet) -> ConversationQuerySet:
        conversations = conversations.archived() if self.archived else conversations.listed()
        if self.pinned is not None:
            conversations = conversations.filter(pinned=self.pinned)
        if self.folder_id is not None:
            conversations = conversations.filter(folder=self.folder_id)
        return conversations


def _refused(refusal: folders.Refused, field: str) -> ApiError:
    if isinstance(refusal, folders.Conflict):  # a name taken, a limit reached: 409
        return ApiError(409, str(refusal), param=field, code="conflict")
    error = {"loc": ["body", "data", field], "msg": str(refusal), "type": "value_error"}
    return ApiError(422, f"{field}: {refusal}", param=field, code="invalid_value", errors=[error])


def change(user: Someone, conversation: Conversation, data: ConversationChange) -> None:
    """Pins, files or archives the conversation as `data` asks (`folder_id: null` takes it out of
    its folder). The folder is looked up first, and a pin refused, before anything is saved."""
    folder: Folder | None = None
    if data.folder_id is not None:
        folder = folders.folder_or_404(user, data.folder_id)
    if data.pinned is not None:
        try:
            folders.pin(conversation, data.pinned)
        except folders.Refused as exc:
            raise _refused(exc, "pinned") from None
    if "folder_id" in data.model_fields_set:
        folders.move(conversation, folder)
    if data.archived is True:
        folders.archive(conversation)
    elif data.archived is False:
        folders.restore(conversation)


@router.get("/folders", response={200: list[FolderOut], **ERRORS})
def list_folders(request: AuthenticatedRequest) -> list[Folder]:
    """The user's folders, by name (at most chat/folders.py's MAX_FOLDERS)."""
    return list(Folder.objects.filter(owner=request.auth))


@router.post("/folders", response={201: FolderOut, **CONFLICTS})
def create_folder(request: AuthenticatedRequest, data: FolderIn) -> Status[Folder]:
    try:
        return Status(201, folders.create_folder(request.auth, data.name))
    except folders.Refused as exc:
        raise _refused(exc, "name") from None


@router.patch("/folders/{folder_id}", response={200: FolderOut, **CONFLICTS})
def rename_folder(request: AuthenticatedRequest, data: FolderIn, folder_id: int = path_id()) -> Folder:
    folder = folders.folder_or_404(request.auth, folder_id)
    try:
        return folders.rename_folder(folder, data.name)
    except folders.Refused as exc:
        raise _refused(exc, "name") from None


@router.delete("/folders/{folder_id}", response={204: None, **ERRORS})
def delete_folder(request: AuthenticatedRequest, folder_id: int = path_id()) -> Status[None]:
    """Deletes the folder; its conversations go back to the list, none is deleted."""
    folders.folder_or_404(request.auth, folder_id).delete()
    return Status(204, None)
