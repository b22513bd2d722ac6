from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_delete, post_migrate


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        from chat import turns
        from chatsite.request_threads import check_asgiref

        checks.register(check_asgiref, checks.Tags.compatibility)

        post_migrate.connect(_repair_search_index, sender=self)
        # However an answer is deleted (with its conversation, on the page, in the admin, from a
        # shell), its generation stops.
        post_delete.connect(turns.answer_deleted, sender="chat.Message", dispatch_uid="chat.answer_deleted")


def _repair_search_index(sender: AppConfig, using: str, **kwargs: Any) -> None:
    # A migration that rebuilt chat_message on SQLite took the search index's triggers with it.
    from chat.search import repair_index

    repair_index(using)
