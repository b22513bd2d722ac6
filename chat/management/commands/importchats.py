"""`python manage.py importchats USER FILE`: add the conversations of a file to a person's history.

The file is this site's JSON export (`exportchats`, the page, the API) or ChatGPT's data export (its
zip, or the conversations.json inside). All or nothing, as on the page: if anything in the file is
wrong, nothing is imported and every problem is printed.
"""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import imports
from chat.management.commands.exportchats import find_user


class Command(BaseCommand):
    help = "Import conversations from this site's JSON export or ChatGPT's data export into a user's history."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", metavar="USERNAME", help="Whose history the conversations join.")
        parser.add_argument("file", metavar="FILE", help="The export: .json, or ChatGPT's .zip.")

    def handle(self, *args: str, user: str, file: str, **options: Any) -> None:
        owner = find_user(user)
        try:
            with open(file, "rb") as upload:
                report = imports.import_file(owner, upload)
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}.") from None
        except imports.ImportRefused as refused:
            raise CommandError(refused.summary) from None
        self.stdout.write(report.summary)
