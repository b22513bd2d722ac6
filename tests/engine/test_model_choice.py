"""Which model vLLM serves, decided from the machine's facts, injected here: no test looks at the
network or the machine's memory."""

import re

import httpx
import pytest

from engine.server import choice, starter
from engine.server.choice import DEFAULT_MODEL_CPU_MEMORY, GIB, Choice, Facts, choose
from engine.server.config import DEFAULT_MODEL, ServerConfig, ServerError

PLENTY = 64 * GIB
UNREACHABLE = "https://huggingface.co cannot be reached: [Errno -3] Temporary failure in name resolution"


def facts(**known) -> Facts:
    values = {"in_cache": False, "not_downloadable": None, "memory_available": PLENTY, "device": "cpu"} | known
    return Facts(**values)


def looked_at(*found: Facts):
    """facts(model) for `choose`, noting which models it was asked about."""
    asked: list[str] = []

    def look(model: str) -> Facts:
        asked.append(model)
        return found[0]

    look.asked = asked  # type: ignore[attr-defined]
    return look


# --- The default -------------------------------------------------------------------------------------


def test_the_default_is_qwen2_when_the_hub_can_give_it():
    look = looked_at(facts())

    assert choose(None, look) == Choice(DEFAULT_MODEL)
    assert look.asked == [DEFAULT_MODEL]


def test_the_default_is_qwen2_when_it_is_in_the_cache_even_with_no_network():
    assert choose(None, looked_at(facts(in_cache=True, not_downloadable=UNREACHABLE))) == Choice(DEFAULT_MODEL)


def test_no_hub_and_no_cache_means_the_starter_model_with_one_paragraph_saying_why_and_what_to_do():
    chosen = choose(None, looked_at(facts(not_downloadable=UNREACHABLE)))

    assert chosen.is_starter
    assert "\n" not in chosen.note  # one paragraph
    assert chosen.note.startswith("Qwen2-7B-Instruct, the default model, cannot run here: it is not in the Hugging")
    assert f"cannot be downloaded ({UNREACHABLE})" in chosen.note
    assert "Serving the starter model instead: SmolLM2-135M-Instruct" in chosen.note
    assert "VLLM_MODEL=/path/to/Qwen2-7B-Instruct make run" in chosen.note  # a local folder
    assert "VLLM_BASE_URL=http://gpu-box:8000/v1" in chosen.note  # a GPU machine


def test_too_little_memory_on_a_cpu_means_the_starter_model():
    chosen = choose(None, looked_at(facts(memory_available=8 * GIB)))

    assert chosen.is_starter
    assert re.search(r"needs about \d+ GiB of memory to run without a GPU, and this machine has 8\.0 GiB", chosen.note)
    assert "cannot be downloaded" not in chosen.note


def test_just_enough_memory_is_enough():
    assert choose(None, looked_at(facts(memory_available=DEFAULT_MODEL_CPU_MEMORY))) == Choice(DEFAULT_MODEL)


def test_both_reasons_are_given_when_both_hold():
    chosen = choose(None, looked_at(facts(not_downloadable=UNREACHABLE, memory_available=4 * GIB)))

    assert "cannot be downloaded" in chosen.note and "4.0 GiB" in chosen.note


def test_a_gpu_machines_memory_is_vllms_to_judge():
    assert choose(None, looked_at(facts(device="cuda", memory_available=4 * GIB))) == Choice(DEFAULT_MODEL)


def test_unknown_memory_does_not_stand_in_the_way():
    assert choose(None, looked_at(facts(memory_available=None))) == Choice(DEFAULT_MODEL)


# --- A model named -----------------------------------------------------------------------------------


def test_the_starter_model_by_name_needs_no_look_at_the_machine():
    look = looked_at(facts())

    assert choose("starter", look) == Choice(starter.NAME)
    assert look.asked == []


def test_a_named_folder_is_served_as_it_is(tmp_path):
    look = looked_at(facts())

    assert choose(str(tmp_path), look) == Choice(str(tmp_path))
    assert look.asked == []


def test_a_named_hub_model_that_cannot_be_had_is_never_replaced():
    with pytest.raises(ServerError) as refused:
        choose("Qwen/Qwen2-7B-Instruct", looked_at(facts(not_downloadable=UNREACHABLE, memory_available=1 * GIB)))

    message = str(refused.value)
    assert message.startswith("Cannot serve Qwen/Qwen2-7B-Instruct: it is not in the Hugging Face cache")
    assert UNREACHABLE in message
    assert "--model /path/to/folder" in message and "--model starter" in message


def test_a_named_hub_model_is_served_whatever_the_memory_says():
    # The person chose it: vLLM, not a guess, says whether it fits.
    chosen = choose("Qwen/Qwen2-7B-Instruct", looked_at(facts(in_cache=True, memory_available=1 * GIB)))

    assert chosen == Choice("Qwen/Qwen2-7B-Instruct")


# --- The facts themselves, from the places they come from ------------------------------------------------------


def test_the_cache_is_found_where_the_hugging_face_libraries_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2-7B-Instruct" / "snapshots" / "abc123"

    assert not choice.is_in_hf_cache(DEFAULT_MODEL)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert choice.is_in_hf_cache(DEFAULT_MODEL)


def test_offline_mode_means_not_downloadable_without_asking(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")

    assert choice.why_not_downloadable(DEFAULT_MODEL) == "HF_HUB_OFFLINE is set"


def test_a_hub_that_refuses_connections_is_not_a_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on loopback's port 9

    assert str(choice.why_not_downloadable(DEFAULT_MODEL)).startswith("http://127.0.0.1:9 cannot be reached: ")


def test_the_hub_is_asked_about_the_model_itself(fake_vllm, monkeypatch):
    # Any HTTP server on loopback plays the hub: the fake vLLM answers 404 for /api/models/...
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake_vllm.root)

    assert choice.why_not_downloadable(DEFAULT_MODEL) == f"{fake_vllm.root} answers 404 for {DEFAULT_MODEL}"
    assert httpx.get(f"{fake_vllm.root}/api/models/{DEFAULT_MODEL}").status_code == 404


# --- What vLLM is then given ----------------------------------------------------------------------------------


def test_the_starter_model_runs_from_its_folder_beside_vllms_environment_in_float32(settings, tmp_path):
    settings.VLLM_VENV = tmp_path / "vllm-venv"
    settings.VLLM_SERVED_MODEL_NAME = ""

    config = ServerConfig.from_settings(model="starter", extra_args=("--enforce-eager",))

    assert config.model == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert config.served_model_name == "smollm2-135m-instruct"
    assert config.is_starter
    assert config.command()[-3:] == ["--dtype", "float32", "--enforce-eager"]


def test_a_model_is_served_under_its_own_short_name_unless_one_is_set(settings, tmp_path):
    settings.VLLM_SERVED_MODEL_NAME = ""
    folder = tmp_path / "My-Model"
    folder.mkdir()

    assert ServerConfig.from_settings(model="Qwen/Qwen2-7B-Instruct").served_model_name == "qwen2-7b-instruct"
    assert ServerConfig.from_settings(model=str(folder)).served_model_name == "my-model"
    settings.VLLM_SERVED_MODEL_NAME = "chat"
    assert ServerConfig.from_settings(model="starter").served_model_name == "chat"
