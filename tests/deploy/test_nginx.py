"""deploy/nginx/chatsite.conf, as shipped but for ports and certificate paths, run by Debian's nginx
in front of the site (DJANGO_HTTPS=true, daphne with --proxy-headers, as `up` runs it), over real
TLS with a certificate made for the test.
"""

import json
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from axes.models import AccessAttempt

from chat.models import Conversation
from tests.accounts import login
from tests.commands import ROOT
from tests.ports import free_port, listening
from tests.site_server import SiteProcess, csrf_headers, site_env
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = ROOT / "deploy" / "nginx" / "chatsite.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    certificate: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def client(self, **options) -> httpx.Client:
        """A browser's view: TLS checked against the test's certificate; a POST says its origin."""
        tls = ssl.create_default_context(cafile=str(self.certificate))
        return httpx.Client(base_url=self.url, verify=tls, headers={"Origin": self.url}, timeout=30, **options)


def shipped_config_for(site_port: int, http_port: int, https_port: int, certificate: Path, key: Path) -> str:
    """The shipped configuration with this machine's ports and the test's certificate; nothing else."""
    text = CONFIG.read_text()
    for old, new in [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{site_port};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("/etc/letsencrypt/live/chat.example.org/fullchain.pem", str(certificate)),
        ("/etc/letsencrypt/live/chat.example.org/privkey.pem", str(key)),
    ]:
        assert old in text, f"{CONFIG} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return re.sub(r"\n *listen \[::\]:[^;]*;", "", text)  # this machine may have no IPv6


def main_config(folder: Path) -> str:
    # What Debian's /etc/nginx/nginx.conf provides around a site's file, in the test's own folder,
    # as one process of the test's own user.
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process off;
pid {folder / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
    include {folder / "chatsite.conf"};
}}
"""


@pytest.fixture(scope="module")
def https_site(django_db_setup, django_db_blocker, fake_vllm_server) -> Iterator[SiteProcess]:
    site = SiteProcess(site_env(fake_vllm_server, DJANGO_HTTPS="true"), daphne_args=("--proxy-headers",)).start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def nginx(https_site, tmp_path_factory) -> Iterator[Nginx]:
    if not Path(NGINX).exists():
        pytest.skip("no nginx (apt-get install nginx; `make test` does)")
    folder = tmp_path_factory.mktemp("nginx")
    certificate, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    http_port, https_port = free_port(), free_port()
    (folder / "chatsite.conf").write_text(shipped_config_for(https_site.port, http_port, https_port, certificate, key))
    (folder / "nginx.conf").write_text(main_config(folder))
    process = subprocess.Popen([NGINX, "-e", "stderr", "-p", str(folder), "-c", str(folder / "nginx.conf")])
    try:
        wait_for(lambda: process.poll() is not None or listening(https_port), 10, "nginx to listen")
        assert process.poll() is None, "nginx exited: see its messages above"
        yield Nginx(process, http_port, https_port, certificate)
    finally:
        process.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_configuration_is_valid_for_debians_nginx(tmp_path):
    if not Path(NGINX).exists():
        pytest.skip("no nginx")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=t", "-keyout", str(key),
         "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    # As shipped, IPv6 included, with only the certificate's paths changed.
    text = CONFIG.read_text().replace("/etc/letsencrypt/live/chat.example.org/fullchain.pem", str(certificate))
    (tmp_path / "chatsite.conf").write_text(
        text.replace("/etc/letsencrypt/live/chat.example.org/privkey.pem", str(key))
    )
    (tmp_path / "nginx.conf").write_text(main_config(tmp_path))

    result = subprocess.run(
        [NGINX, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_plain_http_is_sent_to_https(nginx):
    response = httpx.get(f"http://127.0.0.1:{nginx.http_port}/c/1/?x=1")
    assert response.status_code == 301
    assert response.headers["Location"] == "https://127.0.0.1/c/1/?x=1"


def test_over_https_cookies_are_secure_and_browsers_are_told_to_stay_on_https(nginx, alice):
    with nginx.client() as client:
        response = client.get("/accounts/login/")
        assert response.status_code == 200
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
        assert "Secure" in response.headers["Set-Cookie"]  # the CSRF cookie
        response = client.post(
            "/accounts/login/",
            data={
                "username": "alice",
                "password": "a-long-test-password",
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert response.status_code == 302, response.text
        assert re.search(r"sessionid=[^;]+;.*\bSecure\b", response.headers["Set-Cookie"])


def test_the_site_itself_sends_plain_http_to_https_but_answers_a_monitor(https_site):
    response = httpx.get(f"{https_site.url}/accounts/login/")
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://127.0.0.1:{https_site.port}/accounts/login/"
    assert httpx.get(f"{https_site.url}/healthz").status_code in (200, 503)


def test_failed_sign_ins_count_against_the_browsers_address_which_it_cannot_choose(nginx, alice):
    # From 127.0.0.2 (loopback, like nginx's own 127.0.0.1), claiming another address.
    with nginx.client(transport=httpx.HTTPTransport(local_address="127.0.0.2", verify=ssl.create_default_context(
        cafile=str(nginx.certificate)))) as client:  # fmt: skip
        client.get("/accounts/login/")
        response = client.post(
            "/accounts/login/",
            data={"username": "alice", "password": "wrong", "csrfmiddlewaretoken": client.cookies["csrftoken"]},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
    assert response.status_code == 200
    assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == ["127.0.0.2"]


def delta_arrivals(response: httpx.Response, is_delta, is_end) -> tuple[list[float], float]:
    """Seconds from now until each delta line, and until the line that ends the answer."""
    started, arrivals = time.monotonic(), []
    for line in response.iter_lines():
        if is_delta(line):
            arrivals.append(time.monotonic() - started)
        elif is_end(line):
            return arrivals, time.monotonic() - started
    raise AssertionError("the stream ended without its end")


SLOW_REPLY = ["Local", " models", " keep", " your", " data", " at", " home", "."]
TOKEN_DELAY = 0.4  # seconds: the answer takes 8 x 0.4 = 3.2 s


def test_the_pages_stream_reaches_the_browser_delta_by_delta(nginx, fake_vllm, alice):
    fake_vllm.reply, fake_vllm.token_delay = SLOW_REPLY, TOKEN_DELAY
    with nginx.client() as client:
        login(client, "alice")
        # As the page's htmx form sends it; the answer's stream URL is in the turn it gets back.
        sent = client.post(
            "/c/new/send", data={"prompt": "Why local?"}, headers={**csrf_headers(client), "HX-Request": "true"}
        )
        assert sent.status_code == 200, sent.text
        found = re.search(r'data-stream-url="([^"]+)"', sent.text)
        assert found is not None, sent.text
        stream = found[1]
        with client.stream("GET", stream) as response:
            assert response.status_code == 200
            arrivals, end = delta_arrivals(
                response, lambda line: line == "event: delta", lambda line: line == "event: done"
            )

    # The first delta arrives within about a token's time; the answer ends seconds later.
    assert arrivals[0] < 1.5, arrivals
    assert end - arrivals[0] > 2.0, (arrivals, end)
    assert len(arrivals) >= 6, arrivals


def test_the_openai_doors_stream_reaches_the_client_delta_by_delta(nginx, fake_vllm, alice, alice_token):
    fake_vllm.reply, fake_vllm.token_delay = SLOW_REPLY, TOKEN_DELAY
    body = {"model": "qwen2-7b-instruct", "messages": [{"role": "user", "content": "Why local?"}], "stream": True}
    with (
        nginx.client() as client,
        client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {alice_token}"}
        ) as response,
    ):
        assert response.status_code == 200
        arrivals, end = delta_arrivals(
            response,
            lambda line: '"content": "' in line and '"content": ""' not in line,
            lambda line: line == "data: [DONE]",
        )

    assert arrivals[0] < 1.5, arrivals
    assert end - arrivals[0] > 2.0, (arrivals, end)
    assert len(arrivals) == len(SLOW_REPLY)


BIG = 3 * 1024 * 1024  # over the 2m that nginx allows every other request, under the import's 64 MiB


def big_export() -> bytes:
    """This site's JSON export of one conversation of 320 messages of 10,000 characters: over BIG."""
    messages = [{"role": ("user", "assistant")[n % 2], "content": f"{n} " + "x" * 10_000} for n in range(320)]
    export = {
        "format": "chatsite.conversations",
        "version": 1,
        "conversations": [{"title": "Big", "messages": messages}],
    }
    return json.dumps(export).encode()


def test_an_import_larger_than_other_requests_reaches_the_site_on_both_doors(nginx, alice, alice_token):
    export = big_export()
    assert len(export) > BIG
    with nginx.client() as client:
        login(client, "alice")
        client.get("/import")
        page = client.post("/import", files={"file": ("conversations.json", export)}, headers=csrf_headers(client))
        assert page.status_code == 200, page.text
        assert "Imported 1 conversation with 320 messages" in page.text
        api = client.post(
            "/api/import",
            files={"file": ("conversations.json", export)},
            headers={"Authorization": f"Bearer {alice_token}"},
        )
        assert api.status_code == 201, api.text
    assert Conversation.objects.filter(owner=alice, title="Big").count() == 2


def test_every_other_request_over_2_mb_is_still_refused_by_nginx(nginx, alice, alice_token):
    body = b"x" * BIG
    with nginx.client() as client:
        login(client, "alice")
        for path, headers in [
            ("/c/new/send", csrf_headers(client)),
            ("/api/conversations", {"Authorization": f"Bearer {alice_token}"}),
            ("/v1/chat/completions", {"Authorization": f"Bearer {alice_token}"}),
            ("/importer", csrf_headers(client)),  # only the import's own paths
        ]:
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == 413, (path, response.status_code)
            assert "nginx" in response.text, path  # nginx's own page: the body never reached the site
