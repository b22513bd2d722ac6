"""Where the site's time went: a summary of a py-spy profile recorded by bench/run.py.

py-spy's raw format is one line per distinct stack, `frame;frame;...;frame count`, outermost
first. Each sample is put under the innermost frame that belongs to a known part (the database,
JSON, the vLLM client, the server's I/O: daphne's, uvicorn's or granian's, ...), so the shares add
up to the site's busy time; the functions that were themselves on the CPU most often are listed
after.

    .venv/bin/python -m bench.profile bench/results/profile-<name>.txt
"""

import re
import sys
from collections import Counter
from pathlib import Path

# The first one a frame's file matches names its part; checked from the innermost frame outwards.
PARTS = (
    ("django/db/", "database (Django ORM, sqlite3)"),
    ("sqlite3", "database (Django ORM, sqlite3)"),
    ("json/", "JSON encode/decode"),
    ("aiohttp/", "vLLM client (aiohttp)"),
    ("yarl/", "vLLM client (aiohttp)"),
    ("multidict/", "vLLM client (aiohttp)"),
    ("httpcore/", "vLLM client (httpx, httpcore)"),
    ("httpx/", "vLLM client (httpx, httpcore)"),
    ("engine/", "vLLM client (engine/vllm_client.py)"),
    ("django/template", "templates"),
    ("logging/", "logging"),
    ("chat/", "the turn and the doors (chat/, api/)"),
    ("api/", "the turn and the doors (chat/, api/)"),
    ("ninja/", "django-ninja"),
    ("pydantic", "django-ninja"),
    ("django/", "Django: request, middleware, response"),
    ("asgiref/", "asgiref: sync/async hops, thread pool"),
    ("uvicorn/", "uvicorn: HTTP, sockets"),
    ("httptools/", "uvicorn: HTTP, sockets"),
    ("h11/", "uvicorn: HTTP, sockets"),
    ("granian/", "granian: its Python side of HTTP"),
    ("daphne/", "daphne and twisted: HTTP, sockets"),
    ("twisted/", "daphne and twisted: HTTP, sockets"),
    ("autobahn/", "daphne and twisted: HTTP, sockets"),
    ("asyncio/", "asyncio event loop"),
    ("uvloop/", "asyncio event loop"),
    ("concurrent/", "thread pool"),
    ("threading", "thread pool"),
)
# Innermost frames of a thread that waits rather than works (py-spy --nonblocking cannot always
# tell): left out of the shares, their total given apart.
WAITING = (
    "Selector.select (selectors.py",
    "Condition.wait (threading.py",
    "._wait_for_tstate_lock (threading.py",
    "_worker (concurrent/futures/thread.py",
    "Event.wait (threading.py",
)
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        found = FRAME.match(frame)
        file = found["file"] if found else frame
        for key, part in PARTS:
            if key in file:
                return part
    return "other"


def summarise(text: str, top: int = 15) -> str:
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = waiting = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first is the process
        if frames and any(idle in frames[-1] for idle in WAITING):
            waiting += count
            continue
        total += count
        parts[_part(frames)] += count
        found = FRAME.match(frames[-1]) if frames else None
        own[re.sub(r":\d+\)$", ")", frames[-1]) if found else "?"] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples of the site's threads at work ({waiting} more waiting: select, locks, idle threads)"]
    lines += ["", "| part | share |", "| --- | --- |"]
    lines += [f"| {part} | {count / total:.0%} |" for part, count in parts.most_common()]
    lines += ["", "| on the CPU itself (innermost frame) | share |", "| --- | --- |"]
    lines += [f"| `{function}` | {count / total:.1%} |" for function, count in own.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]).read_text()))
