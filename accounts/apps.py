from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The people who use the site: signing in, and the first account of a new site."""

    name = "accounts"
