"""Fixtures for tests that talk to a fake vLLM over loopback; registered from tests/conftest.py."""

from collections.abc import Iterator

import pytest

from chat.titles import NAMING_INSTRUCTION
from engine import catalog, vllm_client
from tests.fake_vllm import FakeVLLM, Instructed


@pytest.fixture(scope="session")
def fake_vllm_server() -> Iterator[FakeVLLM]:
    """One fake vLLM for the whole run; use `fake_vllm`, which resets it for each test."""
    with FakeVLLM() as fake:
        yield fake


@pytest.fixture
def fake_vllm(fake_vllm_server: FakeVLLM, settings) -> Iterator[FakeVLLM]:
    """The fake vLLM with default knobs and no records, and the site's settings pointing at it."""
    fake_vllm_server.reset()
    # The model declines to name conversations unless a test asks otherwise (tests/chat/test_titles.py):
    # a title stays the first prompt's words, as the tests of everything else expect.
    fake_vllm_server.instructed[NAMING_INSTRUCTION] = Instructed([], status=503)
    settings.VLLM_BASE_URL = fake_vllm_server.base_url
    settings.VLLM_SERVED_MODEL_NAME = fake_vllm_server.served_model_name
    vllm_client.forget_served_model()  # what an earlier test's vLLM served is no news about this one
    catalog.forget()
    yield fake_vllm_server
    # Ends streams a test left stalled, so their threads don't outlive it.
    fake_vllm_server.reset()


@pytest.fixture(autouse=True)
def no_served_model_from_an_earlier_test() -> None:
    # The site keeps what vLLM last said it serves (engine/served_model.py): one test's vLLM, real or
    # fake, must not decide another's bounds and model; nor its engines, another's.
    vllm_client.forget_served_model()
    catalog.forget()


@pytest.fixture
def engines(settings, fake_vllm):
    """add(name, model, api_key) starts a fake vLLM serving `model` (wanting the key, if any) and
    makes it an engine (VLLM_ENGINES), beside the default one (`fake_vllm`, serving qwen2-7b-instruct)."""
    started: list[FakeVLLM] = []
    settings.VLLM_ENGINES = []

    def add(name: str, model: str, api_key: str = "") -> FakeVLLM:
        fake = FakeVLLM(served_model_name=model, root=f"/models/{model}", api_key=api_key).start()
        fake.instructed[NAMING_INSTRUCTION] = Instructed([], status=503)  # no titles: `requests` holds answers only
        started.append(fake)
        engine = {"name": name, "base_url": fake.base_url, "api_key": api_key}
        settings.VLLM_ENGINES = [*settings.VLLM_ENGINES, engine]
        catalog.forget_engines()
        return fake

    yield add
    for fake in started:
        fake.stop()
