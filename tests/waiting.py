"""Waiting for a condition the tests cannot be told about: polled, never slept through blindly.

Where something can announce a change (a Condition, the fake vLLM's `wait_for`, a command's
output), wait on that instead.
"""

import asyncio
import inspect
import time
from collections.abc import Callable

POLL_EVERY = 0.02  # seconds
# How long a condition may take before the test fails: a bound that only a fault reaches, wide
# enough for a machine busy with other work (the suite runs on several workers, beside whatever
# else the machine does). Waiting ends as soon as the condition holds.
WAIT_WITHIN = 30.0


def wait_for[T](condition: Callable[[], T | None], within: float = WAIT_WITHIN, what: str = "the condition") -> T:
    """Polls `condition` until it returns something true, and returns that; fails after `within` s."""
    deadline = time.monotonic() + within
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(POLL_EVERY)
    return result


async def wait_for_async(
    condition: Callable[[], object], within: float = WAIT_WITHIN, what: str = "the condition"
) -> None:
    """`wait_for` for tests on an event loop: the condition may be a coroutine function (async ORM
    calls), and the loop goes on running what is being waited for between checks."""
    try:
        async with asyncio.timeout(within):
            while True:
                if await result if inspect.isawaitable(result := condition()) else result:
                    return
                await asyncio.sleep(POLL_EVERY)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None
