"""`python manage.py exportchats USER`: a person's conversations as this site's JSON export.

All of them, or one with --conversation (also as Markdown with --markdown), to standard output or
to --output FILE. `importchats` reads the JSON back, here or on another site.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import exports
from chat.models import Conversation


class Command(BaseCommand):
    help = "Export a user's conversations as JSON (or one conversation as Markdown)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", metavar="USERNAME", help="Whose conversations.")
        parser.add_argument("--conversation", type=int, metavar="ID", help="Only this conversation.")
        parser.add_argument("--markdown", action="store_true", help="Markdown rather than JSON (needs --conversation).")
        parser.add_argument("--output", "-o", metavar="FILE", help="Write to FILE rather than standard output.")

    def handle(
        self, *args: str, user: str, conversation: int | None, markdown: bool, output: str | None, **options: Any
    ) -> None:
        owner = find_user(user)
        conversations = Conversation.objects.owned_by(owner)
        if conversation is not None:
            conversations = conversations.filter(pk=conversation)
            if not conversations.exists():
                raise CommandError(f"{user} has no conversation {conversation}.")
        if markdown and conversation is None:
            raise CommandError("--markdown exports one conversation: give its --conversation ID.")
        chunks = [exports.as_markdown(conversations.get())] if markdown else exports.json_chunks(conversations)
        if output is None:
            for chunk in chunks:
                self.stdout.write(chunk, ending="")
            return
        with open(output, "w", encoding="utf-8") as file:
            file.writelines(chunks)
        if options["verbosity"]:
            self.stderr.write(f"Wrote {output}.")


def find_user(username: str) -> User:
    try:
        return get_user_model().objects.get_by_natural_key(username)
    except get_user_model().DoesNotExist:
        raise CommandError(f"There is no user {username!r}.") from None
