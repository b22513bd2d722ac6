"""What the kernel says about the processes a test started: whether they run, and their children.

Read from /proc, which is how the tests check that stopping a command leaves nothing behind.
"""

from pathlib import Path


def _stat(pid: int | str) -> tuple[str, int]:
    """(state, parent pid) of a process; OSError if it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state, _ = _stat(pid)
    except OSError:
        return False
    return state not in "ZX"


def _running_children() -> dict[int, list[int]]:
    """The running processes by parent pid."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = _stat(entry.name)
            except OSError:
                continue
            if state not in "ZX":
                children.setdefault(parent, []).append(int(entry.name))
    return children


def children(pid: int) -> list[int]:
    """The running processes `pid` started itself."""
    return _running_children().get(pid, [])


def descendants(pid: int) -> list[int]:
    """The running processes `pid` started, and those they started, and so on."""
    by_parent = _running_children()
    found, todo = [], [pid]
    while todo:
        below = by_parent.get(todo.pop(), [])
        found += below
        todo += below
    return found
