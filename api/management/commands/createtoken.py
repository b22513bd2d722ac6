from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.models import ApiToken


class Command(BaseCommand):
    help = "Issue an API token for USERNAME and print its secret (the only time it is shown)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for, e.g. 'laptop CLI'.")

    def handle(self, *args: str, username: str, name: str, **options: Any) -> None:
        try:
            user = get_user_model()._default_manager.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"There is no user {username!r}.") from None
        token, secret = ApiToken.issue(user, name)
        # The secret alone on stdout, so that `TOKEN=$(python manage.py createtoken alice)` works.
        self.stdout.write(secret)
        self.stderr.write(f"Created token {token} for {username}. Keep the secret: only its hash is stored.")
