"""Endpoint: one OpenAI-compatible server the site talks to (a vLLM, a gateway in front of several),
where it is and with which key.

engine/vllm_client.py takes one for every request it makes; which endpoint answers which model is
decided above it. The default endpoint is the one vLLM of VLLM_BASE_URL and VLLM_API_KEY, so a site
configured as before talks to what it always did.
"""

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    # Up to and including /v1, without a trailing slash. May carry user:password@ (HTTP Basic auth).
    base_url: str = field(repr=False)  # may hold a password: `shown_url` is what may be shown
    # A bearer key (vLLM's --api-key, a gateway's key). Secret: out of repr, logs, pages and exports.
    api_key: str = field(default="", repr=False)

    @property
    def server_root(self) -> str:
        """vLLM's own routes (/health, /tokenize, /metrics) sit beside /v1, not under it."""
        return self.base_url.removesuffix("/v1")

    @property
    def shown_url(self) -> str:
        """The base URL as it may be shown or logged: without any password in it."""
        parts = urlsplit(self.base_url)
        # A user name alone can be a credential too (https://TOKEN@host is sent as Basic auth).
        if parts.username is None and parts.password is None:
            return self.base_url
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


DEFAULT_NAME = "default"


def default_endpoint() -> Endpoint:
    """The vLLM of VLLM_BASE_URL (and VLLM_API_KEY): the one `runvllm` and `up` start."""
    return Endpoint(DEFAULT_NAME, settings.VLLM_BASE_URL, settings.VLLM_API_KEY)
