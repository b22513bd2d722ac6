from django.urls import path, register_converter

from chat import (
    account,
    feedback_views,
    file_views,
    folder_views,
    history_views,
    preset_views,
    sharing,
    sharing_views,
    temporary_views,
    turn_views,
    views,
)
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


class ShareTokenConverter:
    """A shared link's token (chat/sharing.py): any other shape matches no URL, a 404."""

    regex = sharing.TOKEN_PATTERN

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ShareTokenConverter, "share_token")

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("c/new/send", turn_views.send, name="send-new"),
    path("c/<id:pk>/", views.conversation, name="conversation"),
    path("c/<id:pk>/older", views.older, name="older"),
    path("c/list", views.conversation_list, name="conversation-list"),
    path("c/<id:pk>/send", turn_views.send, name="send"),
    path("c/<id:pk>/rename", views.rename, name="rename"),
    path("c/<id:pk>/title", views.title, name="title"),
    path("c/<id:pk>/delete", views.delete, name="delete"),
    path("c/<id:pk>/settings", views.change_settings, name="settings"),
    path("c/<id:pk>/m/<id:message_pk>/show", views.show, name="show"),
    path("c/<id:pk>/m/<id:message_pk>/edit", turn_views.edit, name="edit"),
    path("c/<id:pk>/m/<id:message_pk>/regenerate", turn_views.regenerate, name="regenerate"),
    path("c/<id:pk>/m/<id:message_pk>/footer", views.answer_footer, name="answer-footer"),
    path("c/<id:pk>/m/<id:message_pk>/stream", turn_views.stream, name="stream"),
    path("c/<id:pk>/m/<id:message_pk>/stop", turn_views.stop, name="stop"),
    path("c/<id:pk>/m/<id:message_pk>/feedback", feedback_views.give, name="feedback"),
    # Files brought to a prompt: chat/file_views.py
    path("files", file_views.upload, name="upload-file"),
    path("files/unsent", file_views.files_of_person, name="unsent-files"),
    path("files/when-too-long", file_views.choose_when_too_long, name="when-file-too-long"),
    path("files/<uuid:file_id>/", file_views.file, name="file"),
    path("account/tokens/", account.tokens, name="tokens"),
    path("account/tokens/new", account.create_token, name="create-token"),
    path("account/tokens/<id:pk>/revoke", account.revoke_token, name="revoke-token"),
    # Sharing by link (chat/sharing_views.py), and the temporary chat (chat/temporary_views.py)
    path("c/<id:pk>/share", sharing_views.share, name="share"),
    path("c/<id:pk>/unshare", sharing_views.unshare, name="unshare"),
    path("account/links/", sharing_views.shared_links, name="shared-links"),
    path("account/links/<id:pk>/revoke", sharing_views.revoke, name="revoke-link"),
    path("s/<share_token:token>/", sharing_views.shared, name="shared"),
    path("s/<share_token:token>/continue", sharing_views.continue_shared, name="continue-shared"),
    path("temporary/", temporary_views.page, name="temporary"),
    path("temporary/send", temporary_views.send, name="temporary-send"),
    # The person's history as a whole: chat/history_views.py
    path("search", history_views.search_history, name="search"),
    path("export.json", history_views.export_history, name="export"),
    path("export.zip", history_views.export_history_zip, name="export-zip"),
    path("import", history_views.import_history, name="import"),
    path("c/<id:pk>/export.md", history_views.export_conversation, {"extension": "md"}, name="export-markdown"),
    path("c/<id:pk>/export.json", history_views.export_conversation, {"extension": "json"}, name="export-json"),
    # Where the sidebar shows a conversation: chat/folder_views.py
    path("c/<id:pk>/pin", folder_views.pin, name="pin"),
    path("c/<id:pk>/folder", folder_views.move, name="move"),
    path("c/<id:pk>/archive", folder_views.archive, name="archive"),
    path("c/<id:pk>/restore", folder_views.restore, name="restore"),
    path("archive/", folder_views.archived, name="archived"),
    path("folders/new", folder_views.create_folder, name="create-folder"),
    path("folders/<id:pk>/", folder_views.folder_list, name="folder"),
    path("folders/<id:pk>/rename", folder_views.rename_folder, name="rename-folder"),
    path("folders/<id:pk>/delete", folder_views.delete_folder, name="delete-folder"),
    # Saved settings for new chats: chat/preset_views.py
    path("presets/", preset_views.preset_list, name="presets"),
    path("presets/<id:pk>/", preset_views.change_preset, name="preset"),
    path("presets/<id:pk>/delete", preset_views.delete_preset, name="delete-preset"),
]
