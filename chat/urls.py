from django.urls import path

from chat import history_views, views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("c/new/send", views.send, name="send-new"),
    path("c/<int:pk>/", views.conversation, name="conversation"),
    path("c/<int:pk>/send", views.send, name="send"),
    path("c/<int:pk>/rename", views.rename, name="rename"),
    path("c/<int:pk>/delete", views.delete, name="delete"),
    path("c/<int:pk>/m/<int:message_pk>/stream", views.stream, name="stream"),
    path("c/<int:pk>/m/<int:message_pk>/stop", views.stop, name="stop"),
    # The person's history as a whole: chat/history_views.py
    path("search", history_views.search_history, name="search"),
    path("export.json", history_views.export_history, name="export"),
    path("import", history_views.import_history, name="import"),
    path("c/<int:pk>/export.md", history_views.export_conversation, {"extension": "md"}, name="export-markdown"),
    path("c/<int:pk>/export.json", history_views.export_conversation, {"extension": "json"}, name="export-json"),
]
