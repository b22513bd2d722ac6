"""How vLLM is to be run: the server's configuration, and how the commands report progress."""

import os
import shlex
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from engine.server import starter

type Output = Callable[[str], None]

# How many of a process's last output lines are kept to explain a failure.
LAST_LINES = 20
# What vLLM serves when no model is named and this machine can have it (see choice.py).
DEFAULT_MODEL = "Qwen/Qwen2-7B-Instruct"


class ServerError(Exception):
    """Something a person must fix; the text says what happened and, where known, what to do."""


@dataclass(frozen=True)
class ServerConfig:
    venv: Path
    model: str
    host: str
    port: int
    served_model_name: str
    max_model_len: int
    gpu_memory_utilization: float | None = None
    extra_args: tuple[str, ...] = ()
    log_file: Path | None = None
    module: str = "vllm.entrypoints.openai.api_server"
    cpus: frozenset[int] = frozenset()  # empty: wherever the system puts it
    # VLLM_API_KEY: vLLM then wants it as a bearer key on every /v1 route. Secret: out of repr, and
    # off vLLM's command line (it goes in vLLM's environment: see `environment`).
    api_key: str = field(default="", repr=False)

    @classmethod
    def from_settings(
        cls,
        *,
        model: str | None = None,
        served_model_name: str | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        host: str | None = None,
        port: int | None = None,
        module: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> "ServerConfig":
        """The settings, with each argument that is not None in their place."""
        venv = Path(settings.VLLM_VENV).expanduser()
        chosen = (settings.VLLM_MODEL if model is None else model) or DEFAULT_MODEL
        if starter.is_starter(chosen):
            # Its folder may not be built yet: that happens once vLLM, which builds it, is installed.
            chosen = str(starter.folder(venv))
            extra_args = (*starter.VLLM_ARGS, *extra_args)  # the person's own come last, and win
        else:
            chosen = _model_argument(chosen)
        name = settings.VLLM_SERVED_MODEL_NAME if served_model_name is None else served_model_name
        return cls(
            venv=venv,
            model=chosen,
            host=settings.VLLM_HOST if host is None else host,
            port=settings.VLLM_PORT if port is None else port,
            served_model_name=name or served_name_for(chosen),
            max_model_len=settings.VLLM_MAX_MODEL_LEN if max_model_len is None else max_model_len,
            gpu_memory_utilization=(
                settings.VLLM_GPU_MEMORY_UTILIZATION if gpu_memory_utilization is None else gpu_memory_utilization
            ),
            extra_args=tuple(extra_args),
            log_file=settings.VLLM_LOG_FILE,
            module=settings.VLLM_SERVER_MODULE if module is None else module,
            cpus=cpu_list(settings.VLLM_CPUS),
            api_key=settings.VLLM_API_KEY,
        )

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def url(self) -> str:
        """Where to reach the server from this machine (a wildcard host is reached on loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def model_is_folder(self) -> bool:
        return Path(self.model).is_dir()

    @property
    def is_starter(self) -> bool:
        return starter.is_starter(self.model)

    def command(self) -> list[str]:
        command = [
            str(self.python),
            "-m",
            self.module,
            "--model",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_model_name,
            "--max-model-len",
            str(self.max_model_len),
        ]
        if self.gpu_memory_utilization is not None:
            command += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        # No --api-key: the key goes in the environment (see `environment`), where only its user sees it.
        return command + list(self.extra_args)

    def shown_command(self) -> str:
        """The command line as it may be printed or logged: every API key in it replaced by ***."""
        return shlex.join(redacted(self.command()))

    def environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not _is_the_sites(name)}
        # Private by default: vLLM reports usage statistics unless told not to.
        env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        if self.model_is_folder:
            # Everything vLLM needs is in the folder: nothing is fetched, nothing is announced.
            env.setdefault("HF_HUB_OFFLINE", "1")
        if self.is_starter:
            # vLLM's CPU build otherwise reserves 92% of the machine's memory for its KV cache, and
            # refuses to start while other programs hold more than the rest. The starter model's
            # 2048-token context needs a few MB of it: 1 GiB is plenty, and leaves room for the rest.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # vLLM 0.32 with torch 2.10 or newer saves the compiled model as an "AOT" artifact that its
        # CPU build then fails to load ('function' object has no attribute 'finalize_loading'), so
        # every start compiled the model again: minutes on a small machine. Its compile cache of
        # before loads: the starter model's engine start went from 147 s to 35 s on one core.
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        # The kernels torch compiles for it go to /tmp by default (/tmp/torchinductor_$USER), which a
        # reboot or a tmp cleaner empties: the next start then compiles them all again, 56-60 CPU-s
        # for the starter model on this 2-core machine. Kept in vLLM's environment, they last as long
        # as the torch that made them.
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.venv / "torchinductor-cache"))
        # What activating the environment would do, for anything vLLM starts by name (compilers).
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
        env["PYTHONUNBUFFERED"] = "1"  # its log lines as they happen, not in 8 KB bursts
        if self.api_key:
            # The one VLLM_* setting of the site's that vLLM is to get (_is_the_sites keeps the rest
            # from it): vLLM takes its key from VLLM_API_KEY when no --api-key is given. On the
            # command line any local user could read the key (ps, /proc/PID/cmdline); a process's
            # environment only its own user can. A person's own --api-key after -- still wins:
            # vLLM 0.32 reads the variable only without one (serve/middleware/register.py), and
            # leaves it out of its compile cache's key, so a new key compiles nothing again.
            env["VLLM_API_KEY"] = self.api_key
        return env


def redacted(command: Sequence[str]) -> list[str]:
    """`command` with each --api-key value (`--api-key KEY...` or `--api-key=KEY`) as ***.

    vLLM's --api-key takes one key or more (`--api-key KEY1 KEY2`): the word after it is a key,
    whatever it looks like, and so is each next one up to the next option. vLLM's parser also takes
    it as `--api_key` and abbreviated (`--api-k`, the shortest no other option of its shares).
    """
    shown = list(command)
    in_keys = False
    for index, argument in enumerate(command):
        option, equals, _value = argument.partition("=")
        if _is_api_key_option(option):
            in_keys = not equals
            if equals:
                shown[index] = f"{option}=***"
        elif in_keys and not argument.startswith("-"):
            shown[index] = "***"
        else:
            in_keys = False
    return shown


def _is_api_key_option(argument: str) -> bool:
    option = argument.replace("_", "-")
    return len(option) >= len("--api-k") and "--api-key".startswith(option)


def _is_the_sites(name: str) -> bool:
    """A variable the site reads for itself, which vLLM must not get.

    Its secrets (DJANGO_SECRET_KEY, DATABASE_URL) are no business of another program's. And its
    VLLM_* settings are not for vLLM, which reads variables of that prefix itself: VLLM_PORT, for
    one, is the port of its internal messaging there.
    """
    return hasattr(settings, name) or name.startswith(("DJANGO_", "CHAT_")) or name == "DATABASE_URL"


def cpu_list(text: str) -> frozenset[int]:
    """ "0-2,5" -> {0, 1, 2, 5}, as taskset writes CPU lists."""
    cpus: set[int] = set()
    try:
        for part in filter(None, (part.strip() for part in text.split(","))):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ServerError(f"VLLM_CPUS={text!r} is not a CPU list such as 0 or 0-2,5.") from None
    return frozenset(cpus)


def served_name_for(model: str) -> str:
    """The name vLLM serves a model under unless told otherwise: Qwen/Qwen2-7B-Instruct is
    qwen2-7b-instruct, a folder its own name, the starter model smollm2-135m-instruct."""
    return Path(model).name.lower()


def _model_argument(model: str) -> str:
    """A local folder becomes an absolute path; anything else is a model hub id for vLLM."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if model.startswith(("/", "./", "../", "~")):
        raise ServerError(f"The model folder {model} does not exist.")
    return model


def tail(text: str, count: int) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def terminal(write: Callable[[str], object], flush: Callable[[], object]) -> Output:
    """An Output to the terminal: each line flushed as it comes, and a vanished terminal treated
    as a hung-up one.

    When whoever reads our output goes away (a closed pipe), writing fails: that must not end the
    supervision half-way, nor stop the copying of vLLM's output (it would block on a full pipe).
    Like a closed terminal, it asks us to stop, by the same SIGHUP, and later lines are dropped.
    """
    gone = threading.Event()

    def out(line: str) -> None:
        if gone.is_set():
            return
        try:
            write(line)
            flush()
        except (BrokenPipeError, ValueError, OSError):  # ValueError: written after close
            gone.set()
            os.kill(os.getpid(), signal.SIGHUP)

    return out
