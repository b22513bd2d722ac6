"""A stand-in for `python -m vllm.entrypoints.openai.api_server`, for runvllm's edge cases.

It takes vLLM's command line, logs like vLLM while it "loads", then serves /health and /v1/models.
Environment variables make it misbehave the ways a real vLLM can:

    STANDIN_RECORD=PATH           write its argv and the variables runvllm set to PATH (JSON)
    STANDIN_DELAY=SECONDS         load for this long before listening (default 0.2)
    STANDIN_CRASH_DURING_START=N  exit with code N while loading
    STANDIN_CRASH_AFTER=SECONDS   exit with code 3 this long after it first answers /v1/models...
    STANDIN_CRASHES=PATH          ...while PATH (a counter file) says crashes are left
    STANDIN_CHILD=1               start an "engine" child in its process group, as vLLM does
    STANDIN_IGNORE_SIGTERM=1      ignore SIGTERM, in itself and its child
    STANDIN_PIDS=PATH             append the pid of itself and its child to PATH
    STANDIN_CHATTER=SECONDS       once ready, log a line this often, as vLLM logs its stats

Only the standard library: it runs under whatever python runvllm is pointed at.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(text: str) -> None:
    print(f"(APIServer pid={os.getpid()}) INFO {text}", flush=True)


def parse() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float)
    # As vLLM's: every /v1 route then wants `Authorization: Bearer <key>`, one of these keys.
    parser.add_argument("--api-key", nargs="+")
    return parser.parse_known_args()


def start_engine_child() -> None:
    # Like vLLM's engine core: a child in our process group that outlives us unless the whole
    # group is signalled.
    code = "import signal, time\n"
    if os.environ.get("STANDIN_IGNORE_SIGTERM"):
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "while True: time.sleep(1)\n"
    child = subprocess.Popen([sys.executable, "-c", code])
    record_pid(child.pid)


def record_pid(pid: int) -> None:
    if path := os.environ.get("STANDIN_PIDS"):
        with open(path, "a") as pids:
            pids.write(f"{pid}\n")


def take_a_crash() -> bool:
    """Use up one of the crashes left in the STANDIN_CRASHES counter file."""
    path = os.environ.get("STANDIN_CRASHES")
    if not path:
        return True
    with open(path) as counter:
        left = int(counter.read() or 0)
    if left <= 0:
        return False
    with open(path, "w") as counter:
        counter.write(str(left - 1))
    return True


def main() -> None:
    args, extra = parse()
    served = (args.served_model_name or [args.model])[0]
    # As vLLM 0.32 takes them (vllm/entrypoints/serve/middleware/register.py): the --api-key keys,
    # and only without one of those the VLLM_API_KEY variable.
    keys = [key for key in (args.api_key or [os.environ.get("VLLM_API_KEY")]) if key]
    record_pid(os.getpid())
    if path := os.environ.get("STANDIN_RECORD"):
        watched = ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE", "VLLM_PORT", "VLLM_MODEL", "VIRTUAL_ENV")
        with open(path, "w") as record:
            json.dump(
                {
                    "argv": sys.argv[1:],
                    "extra": extra,
                    "env": {k: os.environ.get(k) for k in watched},
                    "cpus": sorted(os.sched_getaffinity(0)),
                },
                record,
            )
    if os.environ.get("STANDIN_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits at once, leaving its child
    if os.environ.get("STANDIN_CHILD"):
        start_engine_child()

    log(f"non-default args: model={args.model} port={args.port}")
    if code := os.environ.get("STANDIN_CRASH_DURING_START"):
        log("Loading model weights")
        print("Traceback (most recent call last):", flush=True)
        print('  File "standin_vllm.py", line 1, in <module>', flush=True)
        print("RuntimeError: stand-in engine failed to load the model", flush=True)
        sys.exit(int(code))
    delay = float(os.environ.get("STANDIN_DELAY", "0.2"))
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        log(f"Loading model weights, {left:.1f} s to go")
        time.sleep(min(left, 0.5))

    # Set at the first /v1/models answered: runvllm's readiness check has then seen it ready, whatever
    # the machine's pace (a timer from the start of listening could end before anyone had asked).
    models_asked = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if (
                keys
                and self.path.startswith("/v1")
                and self.headers.get("authorization") not in [f"Bearer {key}" for key in keys]
            ):
                self._send(401, b'{"error":"Unauthorized"}')
            elif self.path == "/health":
                self._send(200, b"")
            elif self.path == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": served, "root": args.model}]}).encode())
                models_asked.set()
            else:
                self._send(404, b'{"detail":"Not Found"}')

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    log("Application startup complete.")
    if after := os.environ.get("STANDIN_CRASH_AFTER"):
        if take_a_crash():

            def crash() -> None:
                models_asked.wait()
                time.sleep(float(after))
                print("stand-in engine died", flush=True)
                os._exit(3)

            threading.Thread(target=crash, daemon=True).start()
    if every := os.environ.get("STANDIN_CHATTER"):

        def chatter() -> None:
            while True:
                time.sleep(float(every))
                log("Engine 000: Running: 0 reqs, Waiting: 0 reqs")

        threading.Thread(target=chatter, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
