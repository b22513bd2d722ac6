"""`manage.py` commands run as a person runs them: a process of its own, in the project's root."""

import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path

from engine.server.processes import term_on_parent_death

ROOT = Path(__file__).resolve().parent.parent  # where manage.py is
# A bound on a command's step (a line it prints, its exit), not a wait: each returns once the step is
# done. Wide, as a command starting Python processes of its own (runvllm, up) takes many times its
# usual few seconds on a machine busy with other work; pytest-timeout guards each test as a whole.
COMMAND_WITHIN = 120.0


class ManageCommand:
    """`manage.py COMMAND ARGS` in a process of its own, its output collected as it comes."""

    def __init__(self, command: str, *args: str, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", command, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=term_on_parent_death,  # a test run killed outright must not leave it running
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with suppress(ValueError, OSError):  # the test may close the pipe to play a vanished terminal
            for line in self.process.stdout:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        self.process.wait()
        with self._changed:
            self._changed.notify_all()  # the end of output is news too: the command has exited

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = COMMAND_WITHIN, count: int = 1) -> None:
        """Until `count` lines of output hold `text`, woken by each line; fails if the command exits first."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: sum(text in line for line in self.lines) >= count or self.process.poll() is not None,
                timeout,
            )
            if sum(text in line for line in self.lines) < count:
                state = "exited" if found else "timed out"
                raise AssertionError(
                    f"the command {state} before printing {text!r} {count}x:\n" + "\n".join(self.lines)
                )

    def finish(self, timeout: float = COMMAND_WITHIN) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop it as a service manager would: SIGTERM, which runvllm and up answer by stopping their
        vLLM and site (SIGKILL on the ones that do not stop), then SIGKILL if it is still there. Only
        killed outright, it left a real vLLM that did not answer the kernel's SIGTERM running after the
        test (seen on a machine busy with other work, while vLLM was still starting)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=COMMAND_WITHIN)
            except subprocess.TimeoutExpired:
                self.kill()
