"""`manage.py up` with the stand-in vLLM: the order of things, the site's view of vLLM, a clean stop."""

import io
import json
import signal
import socket
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command

from engine.server.site_workers import Site
from tests.ports import free_port, listening
from tests.processes import alive, children


def test_up_migrates_starts_vllm_then_serves_the_site_against_it(standin, tmp_path):
    site_port = free_port()
    up = standin.run(
        "--port",
        str(site_port),
        command="up",
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        STANDIN_CHILD="1",
        VLLM_BASE_URL="http://127.0.0.1:9/v1",  # not what the site must use: up points it at its own vLLM
    )
    up.wait_for("The chat is at")

    output = up.output
    assert (
        output.index("Applying chat.0001_initial") < output.index("vLLM is ready") < output.index("Starting the site")
    )
    # A fresh database has no account: the sign-in page makes the first one, and up says so.
    assert f"The chat is at http://127.0.0.1:{site_port}/ (Ctrl-C stops it). Open it to create your account." in output
    health = httpx.get(f"http://127.0.0.1:{site_port}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["vllm"] == "ok"
    processes = [*standin.recorded_pids(), *children(up.process.pid)]
    assert len(processes) == 4  # vLLM, its engine, vLLM again as up's child, daphne

    up.process.send_signal(signal.SIGINT)

    assert up.finish() == 0
    assert up.output.index("Stopping the site") < up.output.index("Stopping vLLM")
    assert not [pid for pid in processes if alive(pid)]
    assert not listening(site_port) and not listening(standin.port)


def test_up_starts_vllm_with_the_api_key_and_the_arguments_after_dashes_and_the_site_uses_it(standin, tmp_path):
    key = "sk-test-0123456789"
    site_port = free_port()
    up = standin.run(
        "--port",
        str(site_port),
        "--",
        "--enforce-eager",
        command="up",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        VLLM_API_KEY=key,
    )
    up.wait_for("The chat is at", timeout=60)
    assert json.loads(standin.record.read_text())["argv"][-1] == "--enforce-eager"  # as runvllm passes them

    models = f"http://127.0.0.1:{standin.port}/v1/models"
    assert httpx.get(models, timeout=10).status_code == 401
    assert httpx.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    # Not on the command line of vLLM, nor of the site's worker, which any local user can read.
    vllm, site = standin.recorded_pids(), children(up.process.pid)
    assert vllm and site
    for pid in [*vllm, *site]:
        assert key not in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert httpx.get(f"http://127.0.0.1:{site_port}/healthz", timeout=10).json()["vllm"] == "ok"  # with the key
    up.process.send_signal(signal.SIGINT)
    assert up.finish() == 0
    assert key not in up.output


def test_up_without_vllm_serves_against_vllm_base_url(standin):
    external = standin.run()
    external.wait_for("vLLM is ready")
    site_port = free_port()
    up = standin.run(
        "--port",
        str(site_port),
        "--no-vllm",
        command="up",
        VLLM_BASE_URL=f"http://127.0.0.1:{standin.port}/v1",
        VLLM_PORT=str(free_port()),
    )
    up.wait_for("The chat is at")

    assert f"The site will use the vLLM at http://127.0.0.1:{standin.port}/v1: vLLM serves" in up.output
    assert httpx.get(f"http://127.0.0.1:{site_port}/healthz", timeout=10).json()["vllm"] == "ok"
    assert len(standin.recorded_pids()) == 1  # up started no vLLM of its own

    up.process.send_signal(signal.SIGTERM)
    assert up.finish() == 0
    assert alive(standin.recorded_pids()[0])  # not up's to stop
    external.process.send_signal(signal.SIGTERM)
    assert external.finish() == 0


def test_up_never_serves_the_site_when_vllm_cannot_start(standin, tmp_path):
    up = standin.run(
        "--port",
        str(free_port()),
        command="up",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        STANDIN_CRASH_DURING_START="4",
    )

    assert up.finish() == 1
    assert "vLLM exited with code 4 while starting" in up.output
    assert "Starting the site" not in up.output


def test_up_stops_vllm_when_the_site_cannot_start(standin, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        up = standin.run(
            "--port",
            str(taken.getsockname()[1]),
            command="up",
            DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            STANDIN_CHILD="1",
        )

        assert up.finish() == 1
    assert "The site (daphne) exited with code" in up.output
    assert "vLLM has stopped." in up.output
    assert not [pid for pid in standin.recorded_pids() if alive(pid)]


def test_up_restarts_a_crashed_vllm_while_the_site_stays_up(standin, tmp_path):
    crashes = tmp_path / "crashes"
    crashes.write_text("1")
    site_port = free_port()
    up = standin.run(
        "--port",
        str(site_port),
        command="up",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        STANDIN_CRASH_AFTER="1.5",
        STANDIN_CRASHES=str(crashes),
    )
    up.wait_for("The chat is at")
    site = children(up.process.pid)

    up.wait_for("vLLM is ready", count=2)

    assert (
        "vLLM exited with code 3 after it was ready: Its last words: stand-in engine died. "
        f"vLLM's own output is in {standin.log_file}. Restarting it in 0.3 s."
    ) in up.output
    assert httpx.get(f"http://127.0.0.1:{site_port}/healthz", timeout=10).json()["vllm"] == "ok"
    assert [pid for pid in site if alive(pid)]  # the same daphne throughout
    up.process.send_signal(signal.SIGTERM)
    assert up.finish() == 0


def test_up_serves_the_site_from_several_workers_on_one_port(standin, tmp_path, redis_server, fake_vllm):
    site_port = free_port()
    up = standin.run(
        "--port",
        str(site_port),
        "--no-vllm",
        "--workers",
        "3",
        command="up",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        REDIS_URL=redis_server.url,
        VLLM_BASE_URL=fake_vllm.base_url,
    )
    up.wait_for("The chat is at")

    assert "Starting the site as 3 worker processes" in up.output
    workers = children(up.process.pid)
    assert len(workers) == 3
    for _ in range(6):  # each on a connection of its own: any worker may take it
        assert httpx.get(f"http://127.0.0.1:{site_port}/healthz", timeout=10).json()["vllm"] == "ok"

    up.process.send_signal(signal.SIGINT)
    assert up.finish() == 0
    assert not [pid for pid in workers if alive(pid)]
    assert not listening(site_port)


# The refusals run `up` in this process: what they pin down is what it says, and that it says it
# before anything is done; a process of its own costs a Django start (~3 CPU-s with its checks).
# That a CommandError ends `up` with exit code 1 is test_up_never_serves_the_site_when_vllm_cannot_start's.


def test_up_refuses_several_workers_without_redis(settings):
    settings.REDIS_URL = ""
    said = io.StringIO()

    with pytest.raises(CommandError) as refusal:
        call_command("up", "--port", str(free_port()), "--no-vllm", "--workers", "2", stdout=said)

    assert "--workers 2 needs Redis" in str(refusal.value) and "REDIS_URL" in str(refusal.value)
    assert said.getvalue() == ""  # said before anything is done: no "Applying" of a migration


def test_up_without_vllm_refuses_arguments_for_the_vllm_it_does_not_start():
    said = io.StringIO()

    with pytest.raises(CommandError) as refusal:
        call_command("up", "--port", str(free_port()), "--no-vllm", "--", "--enforce-eager", stdout=said)

    assert "--no-vllm starts no vLLM" in str(refusal.value) and "(--enforce-eager)" in str(refusal.value)
    assert said.getvalue() == ""


def test_up_refuses_several_workers_when_redis_does_not_answer(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"

    with pytest.raises(CommandError, match="needs Redis, and the one at REDIS_URL does not answer"):
        call_command("up", "--port", str(free_port()), "--no-vllm", "--workers", "2", stdout=io.StringIO())


def test_behind_the_https_proxy_up_has_daphne_take_the_browsers_address_from_it(settings):
    site = Site("127.0.0.1", 8080, {})
    assert "--proxy-headers" not in site.command()  # reached directly, a client could claim any address

    settings.HTTPS = True

    assert site.command()[-2:] == ["--proxy-headers", "chatsite.asgi:application"]
