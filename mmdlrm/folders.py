"""Folders one process writes at a time: an OS lock that names its holder, and full disks named with what was kept.

A run folder, a sweep folder and a prepared dataset being written are each held by one process through
`FolderLock`: `flock` on a lock file beside the folder (`<parent>/.<name>.lock`; beside, not inside, because
`prepare` swaps its folder in whole). The OS drops the lock when its process ends, however it ends, so a killed
run never leaves its folder stuck; the file only says who holds it (process id, host, command, since when), for
the refusal. A clean release removes the file again. A second process is refused with that holder named
(`FolderBusy`), or waits for it where waiting is the point (the shared data cache).

`NoSpace` is a full disk said in one sentence: the folder being written, what was kept and how to go on,
instead of a traceback from deep inside a writer (`no_space` finds the OSError however it was wrapped).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

log = logging.getLogger("mmdlrm")

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class FolderBusy(RuntimeError):
    """Another process holds the folder; the message names it and what to do."""


class NoSpace(RuntimeError):
    """The disk filled up while writing a folder; the message says what was kept and how to continue."""


class FolderLock:
    """An exclusive hold on `folder` for this process (see the module docstring); take it with `acquire`.

    Args:
        doing: what the holder does, as the refusal shows it (`mmdlrm train`).
        hint: the way out for a refused process (`give this run another name=...`).
    """

    def __init__(self, folder: str | Path, doing: str, hint: str) -> None:
        self.folder = Path(folder)
        target = self.folder.resolve()  # one lock per folder, however the path to it is spelt
        self.path = target.parent / f".{target.name}.lock"
        self.doing, self.hint = doing, hint
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool = False) -> None:
        """Take the folder (its parent must exist), or wait for its holder with `wait`.

        Raises:
            FolderBusy: another process holds it (and `wait` is off).
        """
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                self._take(fd, wait)
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder may have removed the file between our open and our lock: then take the new one
                current = os.stat(self.path)
                same = (current.st_dev, current.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:
                os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "doing": self.doing,
                  "since": datetime.now().isoformat(timespec="seconds")}  # fmt: skip
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)

    def _take(self, fd: int, wait: bool) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _holder(fd)
        if not wait:
            raise FolderBusy(
                f"{self.folder} is in use: {holder} is writing it, and two processes writing one folder would mix "
                f"their files. Wait for it to end (or stop it), then run this command again; or {self.hint}"
            )
        log.info("%s is in use: waiting for %s to finish with it", self.folder, holder)
        fcntl.flock(fd, fcntl.LOCK_EX)

    def release(self) -> None:
        """Give the folder back (nothing happens where it is not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking, so that nobody takes a lock on a removed file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int, tries: int = 20) -> str:
    """Who holds the lock on `fd`, as the lock file says ("process 123 (mmdlrm train, since ...)")."""
    for _ in range(tries):  # a holder writes its record right after taking the lock
        try:
            record = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict) and "pid" in record:
            host = record.get("host")
            where = f" on {host}" if host and host != socket.gethostname() else ""
            return f"process {record['pid']}{where} ({record.get('doing', 'mmdlrm')}, since {record.get('since', '?')})"
        time.sleep(0.05)
    return "another process"


def no_space(err: BaseException) -> OSError | None:
    """The "no space left on device" (or quota) OSError behind `err`, however wrapped, else None.

    Looks through `__cause__` / `__context__` and torch.distributed.checkpoint's per-rank failures (its
    CheckpointException carries each rank's exception in `failures`).
    """
    seen: set[int] = set()
    pending = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and (current.errno in NO_SPACE or "No space left on device" in str(current)):
            return current
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):
            pending += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        pending += [current.__cause__, current.__context__]
    return None


def as_no_space(err: BaseException, folder: str | Path, kept: Callable[[], str]) -> NoSpace | None:
    """`err` as a `NoSpace` that says "no space left on <folder>" and `kept()` (what is left and how the same command
    goes on; called now, so it can look at what is there), or None when `err` is no full disk."""
    full = None if isinstance(err, NoSpace) else no_space(err)  # a NoSpace was said already, by an inner folder
    if full is None:
        return None
    writing = f" (writing {full.filename})" if full.filename else ""
    return NoSpace(f"no space left on {folder}{writing}; {kept()}")


@contextmanager
def naming_full_disk(folder: str | Path, kept: Callable[[], str]) -> Iterator[None]:
    """Raise a full disk met while writing `folder` as `NoSpace` (see `as_no_space`)."""
    try:
        yield
    except BaseException as err:  # DCP's CheckpointException is a BaseException
        full = as_no_space(err, folder, kept)
        if full is None:
            raise
        raise full from err
