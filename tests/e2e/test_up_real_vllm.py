"""`manage.py up`, the README's one command, as a new user on a machine with no model hub meets it:
the default model cannot be had, so up says why and serves the starter model; the first account
is made on the sign-in page; a question gets a real answer over real sockets; Ctrl-C stops all.

It starts a vLLM of its own (the suite's shared one stays up), on a database it migrates itself.
The model hub is "out of reach" by pointing HF_ENDPOINT at a closed port on loopback, and the
Hugging Face cache at an empty folder: nothing leaves the machine.
"""

import re
import signal

import httpx
import pytest

from engine.server.processes import group_members
from tests.accounts import PASSWORD
from tests.commands import ManageCommand
from tests.ports import free_port, listening
from tests.processes import alive, children
from tests.site_server import csrf_headers
from tests.sse import sse_events

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(30 * 60)]


def test_up_on_a_machine_without_the_model_hub_serves_the_starter_model_and_ctrl_c_stops_both(
    starter_model, vllm_environment, tmp_path
):
    site_port, vllm_port = free_port(), free_port()
    env = vllm_environment(
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        VLLM_MODEL="",  # the default, as on a fresh clone
        VLLM_PORT=str(vllm_port),
        VLLM_LOG_FILE=str(tmp_path / "vllm.log"),
        VLLM_BASE_URL="http://127.0.0.1:9/v1",  # up must point the site at the vLLM it runs instead
        VLLM_API_KEY="sk-e2e-up-51b2",  # vLLM started with the key (in its environment), and the site given it
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HOME=str(tmp_path / "hf-home"),
    )
    env.pop("HF_HUB_OFFLINE")  # up is to find out for itself that there is no hub
    # vLLM in eager mode, passed on as a person would pass it: up's subject is what it starts, says and
    # stops, not vLLM's torch.compile, which the suite's shared vLLM (runvllm, the settings' own) has.
    # Its compile warm-up, even from the cache the shared one filled, was 13-14 of this boot's 37 CPU-s.
    up = ManageCommand("up", "--port", str(site_port), "--", "--enforce-eager", env=env)
    try:
        up.wait_for("The chat is at", timeout=15 * 60)
        output = up.output
        assert "Qwen2-7B-Instruct, the default model, cannot run here" in output
        assert "Serving the starter model instead: SmolLM2-135M-Instruct" in output
        assert f"--model {starter_model} " in output
        assert f"The chat is at http://127.0.0.1:{site_port}/ (Ctrl-C stops it). Open it to create your account." in (
            output
        )
        server = int(output.split("vLLM is ready after", 1)[1].split("(pid ", 1)[1].split(")", 1)[0])
        processes = sorted({*group_members(server), *children(up.process.pid)})

        with httpx.Client(base_url=f"http://127.0.0.1:{site_port}", timeout=120) as browser:
            assert "create yours" in browser.get("/accounts/login/").text
            created = browser.post(
                "/accounts/first-account/",
                data={
                    "username": "ada",
                    "password1": PASSWORD,
                    "password2": PASSWORD,
                    "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                },
            )
            assert created.status_code == 302 and created.headers["location"] == "/", created.text
            assert "SmolLM2-135M-Instruct (starter model)" in browser.get("/").text
            sent = browser.post(
                "/c/new/send",
                data={"prompt": "What is the capital of France?", "temperature": "0", "max_tokens": "64"},
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
        assert "Paris" in "".join(data["text"] for name, data in events if name == "delta")

        up.process.send_signal(signal.SIGINT)

        assert up.finish(timeout=120) == 0
        assert up.output.index("Stopping the site") < up.output.index("vLLM has stopped.")
        assert not [pid for pid in processes if alive(pid)]
        assert not listening(site_port) and not listening(vllm_port)
    finally:
        up.stop()  # if a check failed: up stops vLLM and daphne
