from django.urls import path

from ops import feedback, views

app_name = "ops"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("live", views.live, name="live"),
    path("feedback", feedback.overview, name="feedback"),
    path("feedback.json", feedback.export, name="feedback-export"),
]
