"""The REST API's routes for files a person brings to prompts: upload one, download it, delete one
not yet sent. The same domain as the page's (chat/attachments.py, chat/file_views.py).

A file's id is then given to a prompt as `files` (send, edit, the workflow run) or as an OpenAI
`file` part; another person's file is a 404 everywhere.
"""

import uuid

from django.http import FileResponse
from ninja import File, Router, Status
from ninja.files import UploadedFile

from api.auth import AuthenticatedRequest
from api.schemas import ERRORS, ErrorOut, FileOut
from chat import attachments, file_views
from chat.attachment_models import Attachment

router = Router()


# Served with the type its bytes were found to be (text/plain, application/pdf, ...): any type.
FILE_DOWNLOAD = {"responses": {200: {"description": "The file, as its sniffed type.", "content": {"*/*": {}}}}}


@router.post("/files", response={201: FileOut, 415: ErrorOut, 503: ErrorOut, **ERRORS}, tags=["files"])
def upload_file(request: AuthenticatedRequest, file: File[UploadedFile]) -> Status[Attachment]:
    """Upload one file (multipart field `file`) to attach to a prompt: text, Markdown, CSV, JSON,
    source code, PDF with a text layer, DOCX or HTML, up to CHAT_FILE_MAX_BYTES. Refused with 413
    over the size or the person's total, 415 for another kind, 400 for one that cannot be read
    (a scanned PDF has no text layer)."""
    with file:
        attachment = attachments.take_in(request.auth, file)
    return Status(201, attachment)


@router.get("/files/{file_id}", response={200: None, **ERRORS}, openapi_extra=FILE_DOWNLOAD, tags=["files"])
def download_file(request: AuthenticatedRequest, file_id: uuid.UUID) -> FileResponse:
    """The file as it was uploaded (always as an attachment, with its sniffed type)."""
    return file_views.download(request.auth, file_id)


@router.delete("/files/{file_id}", response={204: None, **ERRORS}, tags=["files"])
def delete_file(request: AuthenticatedRequest, file_id: uuid.UUID) -> Status[None]:
    """Delete a file not yet sent with a prompt (one that was is deleted with its conversation)."""
    if not attachments.delete_unsent(request.auth, file_id):
        raise attachments.FileRefused("Not found.", 404)
    return Status(204, None)
