from django.contrib.auth.views import LoginView
from django.urls import include, path

from tests.oidc_provider import views

urlpatterns = [
    # Before the library's own token view, which it stands in for.
    path("o/token/", views.CountedTokenView.as_view()),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("login/", LoginView.as_view(template_name="provider_login.html"), name="login"),
    path("test/person", views.person),
    path("test/client", views.client),
    path("test/faults", views.faults),
    path("test/token-requests", views.token_requests),
]
