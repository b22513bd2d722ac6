from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_delete, post_migrate


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        from chat import attachments, turns
        from chatsite.request_threads import check_asgiref

        checks.register(check_asgiref, checks.Tags.compatibility)

        post_migrate.connect(_repair_search_index, sender=self)
        # However an answer is deleted (with its conversation, on the page, in the admin, from a
        # shell), its generation stops.
        post_delete.connect(turns.answer_deleted, sender="chat.Message", dispatch_uid="chat.answer_deleted")
        # However a file's row goes (its conversation deleted, its person, an unsent file), its bytes go too.
        post_delete.connect(
            attachments.remove_stored_file, sender="chat.Attachment", dispatch_uid="chat.remove_stored_file"
        )


def _repair_search_index(sender: AppConfig, using: str, **kwargs: Any) -> None:
    # A migration that rebuilt chat_message on SQLite took the search index's triggers with it.
    from chat.search import repair_index

    repair_index(using)
