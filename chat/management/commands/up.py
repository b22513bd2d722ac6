import asyncio
import os
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from engine import vllm_client
from engine.endpoints import default_endpoint
from engine.management.commands.runvllm import add_server_arguments, server_config
from engine.server.config import ServerError, terminal
from engine.server.site_workers import Site, run_with_site


class Command(BaseCommand):
    help = (
        "Run the whole product: migrate the database, install vLLM if needed, start it and wait until it "
        "is ready, then serve the site with daphne. vLLM is restarted if it crashes; Ctrl-C stops both. "
        "Arguments after -- go to vLLM unchanged."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="the site's address (default %(default)s)")
        parser.add_argument("--port", type=int, default=8080, help="the site's port (default %(default)s)")
        parser.add_argument(
            "--no-vllm", action="store_true", help="start no vLLM: the site uses the one at VLLM_BASE_URL"
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="the site's daphne processes, on one port (default %(default)s); more than one needs REDIS_URL",
        )
        add_server_arguments(parser)
        parser.add_argument("vllm_args", nargs="*", metavar="-- VLLM_ARG", help="passed to vLLM unchanged")

    def handle(self, *args: str, **options: Any) -> None:
        out = terminal(self.stdout.write, self.stdout.flush)
        if options["no_vllm"] and options["vllm_args"]:
            # Said rather than dropped: a person who asked for a vLLM flag would think it in effect.
            raise CommandError(
                f"--no-vllm starts no vLLM, so the arguments after -- ({' '.join(options['vllm_args'])}) would "
                "go nowhere. Give them to the vLLM at VLLM_BASE_URL where it is started, or leave out --no-vllm."
            )
        check_workers(options["workers"])
        # A fresh machine has no database yet; an up-to-date one makes this a no-op.
        call_command("migrate", interactive=False, verbosity=min(options["verbosity"], 1))
        # The sign-in page offers to create the first account while there is none.
        greeting = "" if get_user_model()._default_manager.exists() else " Open it to create your account."
        env = dict(os.environ)
        try:
            if options["no_vllm"]:
                managed = None
                health = asyncio.run(vllm_client.check_health())
                shown = default_endpoint().shown_url
                out(f"The site will use the vLLM at {shown}: {health.detail.rstrip('.')}.")
            else:
                managed = server_config(options, out, extra_args=tuple(options["vllm_args"]))
                # The site talks to the vLLM it runs, whatever VLLM_BASE_URL says; it asks that vLLM
                # which model it serves and how long its context is. With the key vLLM was given (in
                # its environment), which may have come from a .env file rather than up's environment.
                env["VLLM_BASE_URL"] = managed.base_url
                env["VLLM_API_KEY"] = managed.api_key
            run_with_site(
                Site(options["host"], options["port"], env, greeting, workers=options["workers"]),
                out,
                vllm=managed,
                device=options["device"],
                timeout=options["timeout"],
                echo=options["verbosity"] > 1,
            )
        except ServerError as exc:
            raise CommandError(str(exc)) from exc


def check_workers(workers: int) -> None:
    """Several workers pass answers and stops to each other through Redis: refuse to start them
    without one, rather than serve a site where a follow that lands on the wrong worker hangs."""
    if workers < 1:
        raise CommandError("--workers must be 1 or more.")
    if workers == 1:
        return
    if not settings.REDIS_URL:
        raise CommandError(
            f"--workers {workers} needs Redis: the workers pass each answer's text and stop requests to "
            "each other through it. Set REDIS_URL (e.g. redis://127.0.0.1:6379/0) to a running Redis server."
        )
    try:  # said now, not by every worker's first request
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5).ping()
    except (redis.RedisError, ValueError) as exc:
        raise CommandError(
            f"--workers {workers} needs Redis, and the one at REDIS_URL does not answer: {exc}"
        ) from None
