"""Debian's Chromium for Playwright (its own browser download is not reachable here)."""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# The last four flags keep it from phoning home (component updates, sync...), which this machine
# refuses noisily.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
