"""chat.turn_storage: a turn's reads and writes: its answer's history, checkpoints, stop and end; its first rows.

Those of the running answer each run on a thread with its own connection (`off_the_loop`), and
write only while this worker still owns the answer (its lease: chat/leases.py), so a worker taken
for dead never writes over a row another worker has settled. The rows a turn starts with are saved
by chat/turns.py's `_save_prompt_and_answer` in one transaction, on the thread that saves them.
"""

from collections.abc import Sequence
from enum import Enum
from typing import Any, Literal

from django.db.models import IntegerField, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from chat import branches, leases, rules
from chat.attachment_models import Attachment, FileChoice
from chat.file_context import Cut, FileText
from chat.leases import WORKER, off_the_loop
from chat.models import Conversation, Message


def read_earlier_turns(prompt: Message) -> list[dict[str, str]]:
    """The turns before `prompt`, as the model is sent them: its own branch, whichever branch is
    shown now (a regenerated or edited turn is answered with the history it was asked in)."""
    if prompt.parent_id is None:
        return []  # the conversation's first prompt: nothing to read
    usable = Message.objects.filter(conversation=prompt.conversation_id).usable_as_context()
    earlier = branches.branch_to(prompt.parent_id, usable).only("role", "content")
    return [{"role": m.role, "content": m.content} for m in earlier]


_earlier_turns = off_the_loop(read_earlier_turns)


def read_prompt_files(prompt: Message, owner_pk: int) -> tuple[list[FileText], bool]:
    """The files the prompt's turn reads: those of every prompt on its branch, the earliest first,
    each once, so a follow-up question still has the document asked about (fitted, and cut with a
    note if need be, as the prompt's own: chat/file_context.py); and whether the person lets a file
    too long for the context be cut."""
    prompts = branches.branch_to(prompt.pk, Message.objects.filter(conversation=prompt.conversation_id, role="user"))
    attachments = Attachment.objects.filter(message__in=prompts.values("pk")).order_by("message", "position")
    files = list({(a.name, a.text): _file_text(a) for a in attachments}.values())
    if not files:
        return files, True
    choice = FileChoice.objects.filter(person=owner_pk).values_list("when_too_long", flat=True).first()
    return files, choice != FileChoice.WhenTooLong.REFUSE


_prompt_files = off_the_loop(read_prompt_files)


def _file_text(attachment: Attachment) -> FileText:
    return FileText(attachment.name, attachment.text, attachment.pages)


@off_the_loop
def _save_files_cut(pk: int, cuts: list[Cut]) -> None:
    Message.objects.filter(pk=pk).update(files_cut=cuts)


@off_the_loop
def _save_checkpoint(pk: int, text: str) -> Literal["saved", "stop", "lost"]:
    """One UPDATE while all is well; "stop" if another worker has asked for a stop through the
    database, "lost" if the row is no longer this worker's."""
    mine = Message.objects.streaming().filter(pk=pk, worker=WORKER)
    if mine.filter(stop_requested_at=None).update(
        content=text, updated_at=timezone.now(), lease_until=leases.new_lease()
    ):
        return "saved"
    return "stop" if mine.exists() else "lost"


@off_the_loop
def _record_stop(pk: int) -> None:
    Message.objects.streaming().filter(pk=pk, stop_requested_at=None).update(stop_requested_at=timezone.now())


@off_the_loop
def _save_end(pk: int, fields: dict[str, Any]) -> None:
    mine = Message.objects.filter(pk=pk, worker=WORKER)
    if mine.streaming().update(**fields):
        return
    # Marked interrupted meanwhile by a worker that found this one's lease expired: that stays
    # (it was marked once, and said so), with all of the text this worker generated.
    mine.filter(status=Message.Status.INTERRUPTED).update(content=fields["content"])


class _Branch(Enum):
    SHOWN = "the branch shown"


# Where a prompt goes: after a message, first in the conversation (None), or after the tip of the
# branch shown when the turn starts.
type Place = int | Literal[_Branch.SHOWN] | None


def _tip(conversation_pk: int) -> Coalesce:
    """The tip of the branch shown, as stored when the statement runs (another tab may have switched
    it): an expression, so that the prompt's INSERT reads it itself rather than a statement before."""
    # A conversation whose messages were saved without a tip continues after the newest of them.
    shown = Conversation.objects.filter(pk=conversation_pk).order_by().values("branch_tip")[:1]
    newest = Message.objects.filter(conversation=conversation_pk).order_by("-pk").values("pk")[:1]
    return Coalesce(Subquery(shown), Subquery(newest), output_field=IntegerField())


def _tip_now(conversation: Conversation) -> int | None:
    """The tip of the branch shown, as stored now."""
    return Conversation.objects.filter(pk=conversation.pk).values_list(_tip(conversation.pk), flat=True).first()


def _save_earlier(conversation: Conversation, earlier: Sequence[tuple[str, str]], *, after: int | None) -> int | None:
    """Save (role, text) messages given as history, one after the other from `after`; the last one's id."""
    saved = Message.objects.bulk_create(
        Message(conversation=conversation, role=role, content=text, status=Message.Status.COMPLETE)
        for role, text in earlier
    )
    # Ids first (the databases give them back), then each one's parent.
    parents = [after, *(message.pk for message in saved)]
    for message, parent in zip(saved, parents, strict=False):
        message.parent_id = parent
    Message.objects.bulk_update(saved, ["parent"])
    return saved[-1].pk if saved else after


def _save_new(conversation: Conversation, prompt: str) -> None:
    """Save a conversation the turn starts, titled after its first prompt unless it has a title."""
    conversation.title = conversation.title or rules.title_from_prompt(prompt)
    conversation.save()


def _touch(conversation: Conversation, answer: Message, prompt: str | None) -> None:
    """Show the branch ending at the new answer, on every page and door from now on, and move the
    conversation to the top of the list with the settings the answer uses: one UPDATE, after the
    answer's INSERT, since it needs the answer's id. Raises Http404 if the conversation has been
    deleted meanwhile (then the caller's transaction takes back the messages just inserted: their
    foreign keys are checked only at its commit)."""
    now = timezone.now()
    # Only what this turn changes: a full save would write back this copy's title and settings over
    # a rename or a change made since it was read.
    changed = {name: getattr(conversation, name) for name in conversation.changed_settings}
    conversations = Conversation.objects.filter(pk=conversation.pk)
    if not conversations.update(updated_at=now, branch_tip=answer, **changed):
        raise Http404("This conversation has been deleted.")
    conversation.branch_tip = answer
    conversation.updated_at = now
    # An untitled conversation is titled after a new prompt, not after a regenerated answer's.
    if prompt is not None and not conversation.title:
        title = rules.title_from_prompt(prompt)
        if conversations.filter(title="").update(title=title):
            conversation.title = title
