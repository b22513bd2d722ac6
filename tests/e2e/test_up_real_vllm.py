"""`manage.py up`, the README's one command, with a real vLLM: a turn over real sockets, then Ctrl-C.

It starts a vLLM of its own (the suite's shared one stays up), on a database it migrates itself,
and is driven as a person drives it: a browser's HTTP to daphne, then Ctrl-C in the terminal.
"""

import re
import signal
import subprocess
import sys

import httpx
import pytest

from engine.server.processes import group_members
from tests.accounts import PASSWORD, login
from tests.commands import ROOT, ManageCommand
from tests.ports import free_port, listening
from tests.processes import alive, children
from tests.site_server import csrf_headers
from tests.sse import sse_events

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(30 * 60)]


def test_up_serves_a_streamed_turn_from_its_own_vllm_and_ctrl_c_stops_both(tiny_model, vllm_environment, tmp_path):
    site_port, vllm_port = free_port(), free_port()
    env = vllm_environment(
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        VLLM_MODEL=str(tiny_model),
        VLLM_PORT=str(vllm_port),
        VLLM_LOG_FILE=str(tmp_path / "vllm.log"),
        VLLM_BASE_URL="http://127.0.0.1:9/v1",  # up must point the site at the vLLM it runs instead
    )
    up = ManageCommand("up", "--port", str(site_port), env=env)
    try:
        up.wait_for("The chat is at", timeout=15 * 60)
        server = int(up.output.split("vLLM is ready after", 1)[1].split("(pid ", 1)[1].split(")", 1)[0])
        processes = sorted({*group_members(server), *children(up.process.pid)})
        create_alice = (
            f"from django.contrib.auth.models import User; User.objects.create_user('alice', password='{PASSWORD}')"
        )
        subprocess.run([sys.executable, "manage.py", "shell", "-c", create_alice], cwd=ROOT, env=env, check=True)

        with httpx.Client(base_url=f"http://127.0.0.1:{site_port}", timeout=60) as browser:
            login(browser, "alice")
            sent = browser.post(
                "/c/new/send",
                data={"prompt": "Explain the benefits of local AI models", "max_tokens": "32"},
                headers={**csrf_headers(browser), "HX-Request": "true"},  # as the page's htmx form sends it
            )
            assert sent.status_code == 200, sent.text
            streaming = re.search(r'data-stream-url="([^"]+)"', sent.text)
            assert streaming is not None, sent.text
            stream_url = streaming[1]
            with browser.stream("GET", stream_url) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                events = list(sse_events(response.iter_lines()))

        assert events[0][0] == "delta"
        assert events[-1][0] == "done", events[-1]
        assert events[-1][1]["status"] == "complete"
        assert events[-1][1]["usage"]["completion_tokens"] == 32

        up.process.send_signal(signal.SIGINT)

        assert up.finish(timeout=120) == 0
        assert up.output.index("Stopping the site") < up.output.index("vLLM has stopped.")
        assert not [pid for pid in processes if alive(pid)]
        assert not listening(site_port) and not listening(vllm_port)
    finally:
        up.kill()  # if a check failed: the kernel then sends vLLM and daphne SIGTERM (see start_group)
