"""Debian's Chromium for Playwright (its own browser download is not reachable here).

The headless shell (Debian's chromium-headless-shell: Chromium's engine without the desktop
browser around it), as Playwright itself runs headless tests: the browser modules took a quarter
less CPU than under the full browser's headless mode (tests/chat/test_browser.py: 31 s against 42 s),
on a suite whose CPU is the bound on this 2-core machine.
"""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium-headless-shell")
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
