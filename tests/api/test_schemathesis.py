"""Schemathesis against the live site's OpenAPI schema, with a token and the fake vLLM behind it.

It fails on any server error or any response the schema does not describe. The same run by hand,
against a site you started: `schemathesis run http://127.0.0.1:8080/api/openapi.json
-H "Authorization: Bearer $TOKEN" --max-examples 10`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).parent / "schemathesis.toml"


# A guard against a hang, not a measure: with the folders', presets' and feedback's routes it makes
# some 1,500 requests, which took over the suite's 300 s on a busy 2-core machine.
@pytest.mark.timeout(900)
def test_no_request_schemathesis_makes_breaks_the_api_or_its_schema(live_site, alice_token, fake_vllm, tmp_path):
    command = [
        str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{live_site.url}/api/openapi.json",
        "--header", f"Authorization: Bearer {alice_token}",
        "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10"),
        "--seed", os.environ.get("SCHEMATHESIS_SEED", "1"),
        "--workers", "1",
        "--request-timeout", "20",
        "--suppress-health-check", "too_slow",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=840, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
