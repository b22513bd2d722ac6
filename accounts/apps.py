from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The people who use the site: signing in, the first account of a new site, their language."""

    name = "accounts"

    def ready(self) -> None:
        from accounts import languages  # noqa: F401 (connects the sign-in signal)
