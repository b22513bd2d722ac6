from django.contrib import admin
from django.urls import include, path

from chat.api import api
from chat.openai_api import openai_api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", api.urls),
    path("v1/", openai_api.urls),
    path("", include("chat.urls")),
]
