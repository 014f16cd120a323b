"""`mmdlrm serve` as a child process on a free port of this machine, for tests and benchmarks that talk to it over
HTTP as any client would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m mmdlrm serve RUN [--ranker RANKER]` on 127.0.0.1 and a free port, as a context manager: entering
    waits until /health answers (loading the model may take a minute on a busy machine), leaving stops it (SIGINT,
    as Ctrl-C would; killed if it does not stop in 20 s). Its output goes to `log`.

    Raises:
        RuntimeError: the server exited or did not answer within `timeout` seconds (with the end of its log).
    """

    def __init__(self, run: Path, log: Path, ranker: Path | None = None, timeout: float = 600.0,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.run, self.ranker, self.log, self.timeout = Path(run), ranker, Path(log), timeout
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    **(env or {})}  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.health: dict = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        for _ in range(3):  # a port found free may be taken by another program before the server binds it
            self.port = free_port()
            command = [sys.executable, "-m", "mmdlrm", "serve", str(self.run), "--port", str(self.port)]
            if self.ranker is not None:
                command += ["--ranker", str(self.ranker)]
            with open(self.log, "ab") as out:
                self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
            if self._wait():
                return self
            if "address already in use" not in self._tail().lower():
                break
        self.__exit__()
        raise RuntimeError(f"mmdlrm serve {self.run} did not start; the end of {self.log}:\n{self._tail()}")

    def _wait(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    self.health = json.loads(response.read())
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        return False

    def _tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.is_file() else ""

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
