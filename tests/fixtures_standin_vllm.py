"""The stand-in vLLM (tests/standin_vllm.py) as runvllm and up run it; registered from tests/conftest.py."""

import os
import signal
import sys

import pytest

from tests.commands import ROOT, ManageCommand
from tests.ports import free_port
from tests.processes import alive


@pytest.fixture
def standin(tmp_path):
    """Everything runvllm needs to run the stand-in, and the files it reports through."""

    class Standin:
        venv = tmp_path / "vllm-venv"
        pids = tmp_path / "pids"
        record = tmp_path / "record.json"
        log_file = tmp_path / "logs" / "vllm.log"
        model = tmp_path / "Qwen2-7B-Instruct"  # a folder: the model is named, and nothing looks at a hub
        port = free_port()
        started: list[ManageCommand] = []

        def env(self, **extra: str) -> dict[str, str]:
            return {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "VLLM_VENV": str(self.venv),
                "VLLM_SERVER_MODULE": "tests.standin_vllm",
                "VLLM_LOG_FILE": str(self.log_file),
                "VLLM_PORT": str(self.port),
                "VLLM_MODEL": str(self.model),
                "VLLM_SERVED_MODEL_NAME": "qwen2-7b-instruct",
                # Were anything to look at the model hub, it would find nothing there, at once.
                "HF_ENDPOINT": "http://127.0.0.1:9",
                "HF_HOME": str(tmp_path / "hf-home"),
                "VLLM_STOP_GRACE": "5",
                "VLLM_RESTART_BACKOFF": "0.3",
                "STANDIN_PIDS": str(self.pids),
                "STANDIN_RECORD": str(self.record),
                **extra,
            }

        def run(self, *args: str, command: str = "runvllm", **extra: str) -> ManageCommand:
            started = ManageCommand(command, *args, env=self.env(**extra))
            self.started.append(started)
            return started

        def recorded_pids(self) -> list[int]:
            return [int(pid) for pid in self.pids.read_text().split()] if self.pids.exists() else []

    Standin.model.mkdir()
    (Standin.venv / "bin").mkdir(parents=True)
    (Standin.venv / "bin" / "python").symlink_to(sys.executable)
    standin = Standin()
    yield standin
    for started in standin.started:
        started.kill()
    for pid in standin.recorded_pids():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
