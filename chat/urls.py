from django.urls import path, register_converter

from chat import account, feedback_views, history_views, views
from chat.models import MAX_ID


class IdConverter:
    """A stored row's id: 1 to MAX_ID. Anything else matches no URL, so it is a 404, not a 500."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        if not 1 <= (number := int(value)) <= MAX_ID:
            raise ValueError(value)  # Django then tries the next pattern, and in the end answers 404
        return number

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("c/new/send", views.send, name="send-new"),
    path("c/<id:pk>/", views.conversation, name="conversation"),
    path("c/<id:pk>/older", views.older, name="older"),
    path("c/list", views.conversation_list, name="conversation-list"),
    path("c/<id:pk>/send", views.send, name="send"),
    path("c/<id:pk>/rename", views.rename, name="rename"),
    path("c/<id:pk>/title", views.title, name="title"),
    path("c/<id:pk>/delete", views.delete, name="delete"),
    path("c/<id:pk>/settings", views.change_settings, name="settings"),
    path("c/<id:pk>/m/<id:message_pk>/show", views.show, name="show"),
    path("c/<id:pk>/m/<id:message_pk>/edit", views.edit, name="edit"),
    path("c/<id:pk>/m/<id:message_pk>/regenerate", views.regenerate, name="regenerate"),
    path("c/<id:pk>/m/<id:message_pk>/footer", views.answer_footer, name="answer-footer"),
    path("c/<id:pk>/m/<id:message_pk>/stream", views.stream, name="stream"),
    path("c/<id:pk>/m/<id:message_pk>/stop", views.stop, name="stop"),
    path("c/<id:pk>/m/<id:message_pk>/feedback", feedback_views.give, name="feedback"),
    path("account/tokens/", account.tokens, name="tokens"),
    path("account/tokens/new", account.create_token, name="create-token"),
    path("account/tokens/<id:pk>/revoke", account.revoke_token, name="revoke-token"),
    # The person's history as a whole: chat/history_views.py
    path("search", history_views.search_history, name="search"),
    path("export.json", history_views.export_history, name="export"),
    path("import", history_views.import_history, name="import"),
    path("c/<id:pk>/export.md", history_views.export_conversation, {"extension": "md"}, name="export-markdown"),
    path("c/<id:pk>/export.json", history_views.export_conversation, {"extension": "json"}, name="export-json"),
]
