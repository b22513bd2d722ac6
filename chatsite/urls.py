from django.contrib import admin
from django.urls import include, path

from accounts import views as accounts
from api.openai_compat import openai_api
from api.rest import api

urlpatterns = [
    path("admin/", admin.site.urls),
    # Before Django's own sign-in page, which it stands in for.
    path("accounts/login/", accounts.sign_in, name="login"),
    path("accounts/first-account/", accounts.first_account, name="first-account"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", api.urls),
    path("v1/", openai_api.urls),
    path("", include("chat.urls")),
]
