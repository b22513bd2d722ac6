from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from engine.server import starter
from engine.server.choice import DEFAULT_DISPLAY_NAME, choose, gather
from engine.server.config import DEFAULT_MODEL, Output, ServerConfig, ServerError, terminal
from engine.server.install import is_installed
from engine.server.supervisor import prepare, run


def add_server_arguments(parser: CommandParser) -> None:
    """The vLLM options runvllm and up share; each defaults to its VLLM_* setting."""
    parser.add_argument(
        "--model",
        help=f"a model hub id, a local model folder, or {starter.NAME!r} for the starter model "
        f"({starter.DISPLAY_NAME}, no model hub needed). Default: VLLM_MODEL if set, else {DEFAULT_MODEL} "
        "when this machine can have it, else the starter model",
    )
    parser.add_argument(
        "--served-model-name",
        help="the name vLLM serves the model under (default: VLLM_SERVED_MODEL_NAME, else the model's own name, "
        f"such as {DEFAULT_DISPLAY_NAME.lower()})",
    )
    parser.add_argument("--max-model-len", type=int, help=f"default {settings.VLLM_MAX_MODEL_LEN}")
    parser.add_argument("--gpu-memory-utilization", type=float, help="default: vLLM's own")
    parser.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default=settings.VLLM_DEVICE,
        help="which vLLM build to install: auto picks cuda when an NVIDIA GPU is present",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=settings.VLLM_START_TIMEOUT,
        help="seconds to wait for vLLM to be ready (default %(default)s)",
    )


def server_config(
    options: dict[str, Any],
    out: Output,
    *,
    host: str | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> ServerConfig:
    """The vLLM to run: the model named, or the best this machine can have (saying so if that is
    not the default model)."""
    requested = options["model"] or settings.VLLM_MODEL or None
    choice = choose(requested, lambda model: gather(model, options["device"]))
    if choice.note:
        out(choice.note)
    return ServerConfig.from_settings(
        model=choice.model,
        served_model_name=options["served_model_name"],
        max_model_len=options["max_model_len"],
        gpu_memory_utilization=options["gpu_memory_utilization"],
        host=host,
        port=port,
        extra_args=extra_args,
    )


class Command(BaseCommand):
    help = (
        "Run vLLM's OpenAI-compatible server from its own virtual environment (installing it first if "
        "needed), wait until it is ready, and stop it with its engine processes on Ctrl-C. "
        "Arguments after -- go to vLLM unchanged."
    )
    # No system checks: they are the site's (its URLs and their API schemas, models, admin, the
    # engines it lists, the asgiref its request threads need), and runvllm serves none of it; `up`,
    # runserver and `check` run them where the site starts. A mistake there must not keep vLLM
    # from starting, nor each start pay the second of CPU that importing every URL's schemas costs.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_server_arguments(parser)
        parser.add_argument("--host", help=f"default {settings.VLLM_HOST}")
        parser.add_argument("--port", type=int, help=f"default {settings.VLLM_PORT}")
        parser.add_argument(
            "--install",
            action="store_true",
            help="install vLLM into VLLM_VENV, and the model to serve if it is the starter model, then exit",
        )
        parser.add_argument("--restart", action="store_true", help="restart vLLM after a crash, with backoff")
        parser.add_argument("vllm_args", nargs="*", metavar="-- VLLM_ARG", help="passed to vLLM unchanged")

    def handle(self, *args: str, **options: Any) -> None:
        out = terminal(self.stdout.write, self.stdout.flush)
        try:
            config = server_config(
                options, out, host=options["host"], port=options["port"], extra_args=tuple(options["vllm_args"])
            )
            if options["install"]:
                if is_installed(config):
                    out(f"vLLM is already installed in {config.venv}.")
                prepare(config, out, options["device"])
                return
            run(
                config,
                out,
                device=options["device"],
                timeout=options["timeout"],
                restart=options["restart"],
                echo=options["verbosity"] > 1,
            )
        except ServerError as exc:
            raise CommandError(str(exc)) from exc
