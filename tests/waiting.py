import time


def wait_for(condition, timeout: float = 10.0):
    """Polls `condition` until it returns something true, and returns that; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result
