"""`python manage.py run --input '{"prompt": ..., "temperature": 0.7}'`: the seed's `model-compose run`.

The workflow's input as model-compose takes it (`prompt`, `temperature`, and the `max_tokens` and
`top_p` the seed's README adds; `files`, ids from `POST /api/files`), run as a chat turn in this
process: the answer prints as it streams and is saved as a new conversation in the user's history.
Ctrl-C stops the answer and keeps what was generated.
"""

import asyncio
import json
from contextlib import aclosing
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from pydantic import ValidationError

from api.schemas import WorkflowInput
from chat import attachments, turns
from chat.limits import TooManyAnswers
from chat.models import Conversation, Message
from chat.turns import TurnEnded
from engine import catalog, http_client
from engine.vllm_client import TextDelta


class Command(BaseCommand):
    help = "Run the 'Chat with vLLM server' workflow: print the answer as it streams, and save it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--input",
            required=True,
            metavar="JSON",
            help='The workflow input, e.g. \'{"prompt": "Explain the benefits of local AI models", '
            '"temperature": 0.7}\' (also max_tokens, top_p).',
        )
        parser.add_argument(
            "--user",
            metavar="USERNAME",
            help="Whose chat history the run is saved in (default: CHAT_CLI_USER, else the only superuser).",
        )

    def handle(self, *args: str, input: str, user: str | None, **options: Any) -> None:
        workflow_input = parse_input(input)
        owner = find_owner(user or settings.CHAT_CLI_USER)
        answer = asyncio.run(self.run_turn(owner, workflow_input))
        if answer.content:
            self.stdout.write("")  # the line break after the answer
        if answer.model_name and options["verbosity"] > 0:
            # On stderr, so that stdout is the answer alone, as model-compose prints it.
            self.stderr.write(f"(answered by {answer.model_name})")
        if answer.has_failed:
            raise CommandError(answer.error)
        if answer.status == Message.Status.STOPPED:
            raise CommandError("Stopped; the answer so far is saved.", returncode=130)
        if options["verbosity"] > 1:
            self.stderr.write(f"Saved in conversation {answer.conversation_id}.")

    async def run_turn(self, owner: User, workflow_input: WorkflowInput) -> Message:
        conversation = Conversation(owner=owner)
        workflow_input.apply_to(conversation)
        try:
            files = await attachments.named_by(owner, workflow_input.files)  # from POST /api/files
            _, answer = await turns.start_turn(conversation, workflow_input.prompt, files=files)
        except (TooManyAnswers, catalog.NoSuchModel, attachments.FileRefused) as exc:
            raise CommandError(exc.message) from None
        try:
            async with aclosing(turns.follow(answer)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        self.stdout.write(event.text, ending="")
                        self.stdout.flush()
                    elif isinstance(event, TurnEnded):
                        return event.message
            raise AssertionError("a turn's events end with TurnEnded")
        except asyncio.CancelledError:
            # Ctrl-C: asyncio.run cancels this task; stopping records the answer as "stopped".
            return await turns.stop_turn(answer)
        finally:
            await http_client.close_session()


def parse_input(text: str) -> WorkflowInput:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--input is not valid JSON: {exc}") from None
    try:
        return WorkflowInput.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'input'}: {error['msg']}" for error in exc.errors()
        )
        raise CommandError(f"--input is not valid: {problems}") from None


def find_owner(username: str) -> User:
    users = get_user_model()._default_manager
    if username:
        try:
            return users.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"There is no user {username!r}.") from None
    superusers = list(users.filter(is_superuser=True, is_active=True)[:2])
    if len(superusers) == 1:
        return superusers[0]
    found = "there is no superuser" if not superusers else "there is more than one superuser"
    raise CommandError(f"Whose history is this run for? Pass --user USERNAME or set CHAT_CLI_USER ({found}).")
