from django.contrib import admin
from django.urls import include, path

from api.openai_compat import openai_api
from api.rest import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", api.urls),
    path("v1/", openai_api.urls),
    path("ops/", include("ops.urls")),
    path("", include("chat.urls")),
]
