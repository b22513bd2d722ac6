from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        post_migrate.connect(_repair_search_index, sender=self)


def _repair_search_index(sender: AppConfig, using: str, **kwargs: Any) -> None:
    # A migration that rebuilt chat_message on SQLite took the search index's triggers with it.
    from chat.search import repair_index

    repair_index(using)
