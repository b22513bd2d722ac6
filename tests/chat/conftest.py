"""The chat's browser tests share Chromium and the page with the others (tests/fixtures_browser.py)."""

import pytest


@pytest.fixture
def error_statuses_shown() -> bool:
    # The chat's tests provoke refusals (a limit, a form error, a stale page) and check that the
    # page says so; the status Chromium and htmx log for each is no fault of the page.
    return True
