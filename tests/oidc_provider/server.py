"""The test OpenID Connect provider in a daphne process of its own, and a person signing in at it
through the site, as a browser does (httpx, following the redirects)."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.server.processes import term_on_parent_death
from tests.accounts import PASSWORD
from tests.commands import COMMAND_WITHIN, ROOT
from tests.ports import free_port
from tests.site_server import STARTS_WITHIN, stop_daphne
from tests.waiting import wait_for

CLIENT_ID = "local-chat"
CLIENT_SECRET = "local-chat-secret-for-the-tests"
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class OidcProvider:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = f"{self.url}/o"
        # Made for this run: no key in the repository, none shared between runs.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
            "OIDC_PROVIDER_DATABASE": str(folder / "provider.sqlite3"),
            "OIDC_PROVIDER_RSA_KEY": pem.decode(),
            "OIDC_PROVIDER_ISSUER": self.issuer,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "OidcProvider":
        migrate = [sys.executable, "-m", "django", "migrate", "--verbosity", "0"]
        subprocess.run(migrate, cwd=ROOT, env=self.env, check=True, timeout=COMMAND_WITHIN)
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "tests.oidc_provider.asgi:application"],
            cwd=ROOT,
            env=self.env,
            preexec_fn=term_on_parent_death,
        )
        wait_for(self._answers, STARTS_WITHIN, "the OpenID Connect provider to answer")
        return self

    def _answers(self) -> bool:
        assert self.process
        if self.process.poll() is not None:
            raise RuntimeError(f"the provider exited with {self.process.returncode}")
        try:
            return httpx.get(f"{self.issuer}/.well-known/jwks.json", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        stop_daphne(self.process)

    def site_env(self) -> dict[str, str]:
        """What a site's operator sets to sign in with this provider (README.md)."""
        return {
            "OIDC_ISSUER": self.issuer,
            "OIDC_PROVIDER_NAME": "Example Org",
            "OIDC_AUTHORIZATION_ENDPOINT": f"{self.issuer}/authorize/",
            "OIDC_TOKEN_ENDPOINT": f"{self.issuer}/token/",
            "OIDC_USERINFO_ENDPOINT": f"{self.issuer}/userinfo/",
            "OIDC_JWKS_ENDPOINT": f"{self.issuer}/.well-known/jwks.json",
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        }

    def register(self, site_url: str) -> None:
        """The site as a client of the provider, as its administrator registers it."""
        self._post(
            "/test/client",
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": f"{site_url}/oidc/callback/"},
        )

    def person(self, username: str, *, email: str = "", groups: tuple[str, ...] = (), active: bool = True) -> None:
        self._post(
            "/test/person",
            {"username": username, "password": PASSWORD, "email": email, "groups": groups, "active": active},
        )

    def faults(self, **faults: object) -> None:
        """Faults in the ID tokens it issues from now on (tests/oidc_provider/claims.py); none: none."""
        self._post("/test/faults", faults)

    def token_requests(self) -> int:
        """How many requests its token endpoint has had since it started."""
        response = httpx.get(f"{self.url}/test/token-requests", timeout=30)
        assert response.status_code == 200, response.text
        return int(response.json()["count"])

    def _post(self, path: str, body: object) -> None:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=30)
        assert response.status_code == 204, response.text


def sign_in_at_provider(client: httpx.Client, username: str, start: str = "/oidc/authenticate/") -> httpx.Response:
    """From the site's "Sign in with …" link through the provider's sign-in form and back to the site,
    following every redirect; the site's last answer."""
    form = client.get(start, follow_redirects=True)
    assert form.status_code == 200, form.text
    if form.url.path != "/login/":  # already signed in at the provider: back at the site
        return form
    token = CSRF_FIELD.search(form.text)
    assert token, form.text
    next_page = re.search(r'name="next" value="([^"]*)"', form.text)
    assert next_page
    return client.post(
        str(form.url),
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": username,
            "password": PASSWORD,
            "next": html.unescape(next_page.group(1)),
        },
        follow_redirects=True,
    )
