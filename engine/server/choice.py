"""Which model vLLM serves: the one a person named, or else the best this machine can have.

Named (with --model or VLLM_MODEL), a model is never replaced: if it cannot be had, the command
says why and stops. Not named, it is Qwen2-7B-Instruct when this machine can have it (in the
Hugging Face cache, or downloadable from the model hub, and enough memory to run it), and
otherwise the starter model, with one paragraph saying why and how to get the real one.

The facts about the machine are gathered by `gather` (one quick look at the model hub) and passed
in, so that the decision itself can be tested with any facts.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from engine.server import starter
from engine.server.config import DEFAULT_MODEL, ServerError
from engine.server.install import detect_device

DEFAULT_DISPLAY_NAME = "Qwen2-7B-Instruct"
GIB = 1024**3
# Running it on a CPU: its bf16 weights (7.6 billion parameters), vLLM's default 4 GiB of KV
# cache, and about 2 GiB for torch and vLLM themselves.
DEFAULT_MODEL_CPU_MEMORY = int(15.3e9 + 4 * GIB + 2 * GIB)
# The look at the model hub must not hold up a machine that has no network.
HUB_TIMEOUT = 3.0


@dataclass(frozen=True)
class Facts:
    """What this machine can have of one hub model."""

    in_cache: bool  # its files are in the Hugging Face cache
    not_downloadable: str | None  # why the model hub cannot give it, or None when it can
    memory_available: int | None  # bytes free now; None when unknown
    device: str  # "cpu" or "cuda"


@dataclass(frozen=True)
class Choice:
    model: str  # a hub id, a folder, or starter.NAME
    note: str = ""  # why the default was replaced, for the terminal

    @property
    def is_starter(self) -> bool:
        return self.model == starter.NAME


def choose(requested: str | None, facts: Callable[[str], Facts]) -> Choice:
    """`requested` is what the person named, None for the default; `facts(model)` looks at the machine."""
    if requested is None:
        return _default(facts(DEFAULT_MODEL))
    if starter.is_starter(requested) or _is_folder_path(requested):
        return Choice(starter.NAME if starter.is_starter(requested) else requested)
    known = facts(requested)
    if known.in_cache or known.not_downloadable is None:
        return Choice(requested)
    raise ServerError(
        f"Cannot serve {requested}: it is not in the Hugging Face cache ({hf_cache()}) and cannot be downloaded "
        f"({known.not_downloadable}). Give a folder that holds the model (--model /path/to/folder, or VLLM_MODEL), "
        f"or run where the model hub can be reached. The starter model needs neither: --model {starter.NAME}."
    )


def _default(known: Facts) -> Choice:
    reasons = []
    if not known.in_cache and known.not_downloadable is not None:
        reasons.append(
            f"it is not in the Hugging Face cache ({hf_cache()}) and cannot be downloaded ({known.not_downloadable})"
        )
    if known.device == "cpu" and known.memory_available is not None:
        if known.memory_available < DEFAULT_MODEL_CPU_MEMORY:
            reasons.append(
                f"it needs about {DEFAULT_MODEL_CPU_MEMORY / GIB:.0f} GiB of memory to run without a GPU, "
                f"and this machine has {known.memory_available / GIB:.1f} GiB free"
            )
    if not reasons:
        return Choice(DEFAULT_MODEL)
    note = (
        f"{DEFAULT_DISPLAY_NAME}, the default model, cannot run here: {'; and '.join(reasons)}. "
        f"Serving the starter model instead: {starter.DISPLAY_NAME}, a small model ({starter.SIZE}) that pip "
        "installs with no model hub, good for trying the chat out but not for real work. "
        f"To run {DEFAULT_DISPLAY_NAME}, put it in a folder on this machine and start with "
        f"`VLLM_MODEL=/path/to/{DEFAULT_DISPLAY_NAME} make run`, or run vLLM on a machine with a GPU and "
        "point the site at it: `VLLM_BASE_URL=http://gpu-box:8000/v1 .venv/bin/python manage.py up --no-vllm`."
    )
    return Choice(starter.NAME, note)


def _is_folder_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().is_dir()


# --- The facts --------------------------------------------------------------------------------


def gather(model: str, device: str = "auto") -> Facts:
    in_cache = is_in_hf_cache(model)
    return Facts(
        in_cache=in_cache,
        not_downloadable=None if in_cache else why_not_downloadable(model),
        memory_available=memory_available(),
        device=detect_device() if device == "auto" else device,
    )


def hf_cache() -> Path:
    """Where the Hugging Face libraries keep downloaded models, as they work it out."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def is_in_hf_cache(model: str) -> bool:
    snapshots = hf_cache() / f"models--{model.replace('/', '--')}" / "snapshots"
    return any(snapshots.glob("*/config.json"))


def why_not_downloadable(model: str) -> str | None:
    """None if the model hub answers for the model now; else why not, in a few words."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        # httpx, not engine/http_client.py: this asks the model hub, not an engine, once, from a
        # command; VLLM_API_KEY and VLLM_CA_FILE are no business of the hub's.
        response = httpx.get(f"{endpoint}/api/models/{model}", timeout=HUB_TIMEOUT)
    except httpx.TimeoutException:
        return f"{endpoint} did not answer within {HUB_TIMEOUT:g} s"
    except httpx.HTTPError as exc:
        return f"{endpoint} cannot be reached: {exc or type(exc).__name__}"
    if response.status_code != 200:
        return f"{endpoint} answers {response.status_code} for {model}"
    return None


def memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
