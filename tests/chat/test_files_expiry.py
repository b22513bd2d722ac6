"""Files uploaded and never sent (another tab's, the API's, a page closed before sending) are deleted
CHAT_UNSENT_FILE_HOURS after their upload, row and bytes, by each worker's periodic sweep
(chat/worker_jobs.py): they stop counting toward their person's total."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from chat import attachments, worker_jobs
from chat.models import Attachment, Conversation, Message
from tests.waiting import wait_for_async

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def files_root(settings, tmp_path):
    settings.CHAT_FILES_ROOT = tmp_path / "files"
    return settings.CHAT_FILES_ROOT


def uploaded(owner, name: str, text: str, *, hours_ago: float = 0) -> Attachment:
    attachment = attachments.take_in_bytes(owner, name, text.encode())
    Attachment.objects.filter(pk=attachment.pk).update(created_at=timezone.now() - timedelta(hours=hours_ago))
    return attachment


def test_files_left_unsent_past_the_setting_are_deleted_and_no_longer_count(alice, bob, settings):
    settings.CHAT_UNSENT_FILE_HOURS = 24
    settings.CHAT_FILES_MAX_BYTES_PER_PERSON = 100
    old = uploaded(alice, "old.txt", "o" * 60, hours_ago=25)
    with pytest.raises(attachments.FileRefused) as refused:  # the forgotten file fills alice's room
        uploaded(alice, "new.txt", "n" * 60)
    assert refused.value.status == 413
    fresh = uploaded(bob, "fresh.txt", "f" * 10, hours_ago=23)
    conversation = Conversation.objects.create(owner=bob, title="Sent")
    prompt = Message.objects.create(conversation=conversation, role=Message.Role.USER, content="Read it")
    sent = uploaded(bob, "sent.txt", "s" * 10, hours_ago=48)
    attachments.give_to(prompt, [sent])

    assert attachments.delete_expired_unsent() == 1

    assert set(Attachment.objects.values_list("name", flat=True)) == {"fresh.txt", "sent.txt"}
    assert not old.path.exists() and fresh.path.exists() and sent.path.exists()
    assert uploaded(alice, "new.txt", "n" * 60).size == 60


async def test_the_workers_sweep_deletes_the_expired_files_as_it_starts(alice, settings):
    settings.CHAT_UNSENT_FILE_HOURS = 1
    old = await sync_to_async(uploaded)(alice, "old.txt", "forgotten", hours_ago=2)
    sweeping = asyncio.create_task(worker_jobs._expire_unsent_files())
    try:
        await wait_for_async(lambda: not old.path.exists(), what="the worker to delete the expired file")
        assert not await Attachment.objects.filter(pk=old.pk).aexists()
    finally:
        sweeping.cancel()
