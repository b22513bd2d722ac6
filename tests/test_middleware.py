"""The site's middleware as daphne runs it."""

import logging

from django.core.handlers.asgi import ASGIHandler


def test_no_middleware_sends_a_request_through_a_thread(caplog, settings):
    # Django adapts a sync-only middleware on an async stack by running it in a thread, and says so
    # in DEBUG.
    settings.DEBUG = True
    caplog.set_level(logging.DEBUG, logger="django.request")
    ASGIHandler()  # loads the middleware chain as the ASGI application does
    adapted = [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()]
    assert [m for m in adapted if "middleware" in m.lower()] == []
