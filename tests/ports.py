"""Loopback ports for the servers the tests start."""

import socket


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), for a server about to be started."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts connections on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
