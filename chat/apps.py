from django.apps import AppConfig
from django.db.models.signals import post_delete


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        from chat import turns

        # However an answer is deleted (with its conversation, on the page, in the admin, from a
        # shell), its generation stops.
        post_delete.connect(turns.answer_deleted, sender="chat.Message", dispatch_uid="chat.answer_deleted")
