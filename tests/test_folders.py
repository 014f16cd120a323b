"""The folder lock: one holder, named to whoever is refused; never stuck after its holder is killed."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mmdlrm.folders import FolderBusy, FolderLock, NoSpace, naming_full_disk, no_space

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from mmdlrm.folders import FolderLock
FolderLock(sys.argv[1], "mmdlrm test-holder", "").acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder` until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_a_held_folder_is_refused_naming_its_holder_and_a_killed_holder_leaves_it_free(tmp_path):
    folder = tmp_path / "runs" / "a"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("kept")
    holder = _holder(folder)
    try:
        with pytest.raises(FolderBusy) as refused:
            FolderLock(tmp_path / "runs" / "." / "a", "mmdlrm train", "give this run another name=...").acquire()
        message = str(refused.value)
        assert f"is in use: process {holder.pid} (mmdlrm test-holder, since " in message
        assert message.endswith("run this command again; or give this run another name=...")
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    lock = FolderLock(folder, "mmdlrm train", "")
    lock.acquire()  # the OS dropped the killed holder's lock
    assert json.loads(lock.path.read_text())["pid"] != holder.pid
    lock.release()
    assert not lock.path.exists() and sorted(p.name for p in tmp_path.rglob("*")) == ["a", "mine.txt", "runs"]


def test_one_process_holds_a_folder_once_and_gives_it_back(tmp_path):
    first, second = FolderLock(tmp_path / "x", "mmdlrm sweep", "hint"), FolderLock(tmp_path / "x", "mmdlrm sweep", "hint")
    with first:
        with pytest.raises(FolderBusy, match="is in use: process .* \\(mmdlrm sweep, since"):
            second.acquire()
        assert not second.held
    with second:
        assert second.held
    assert not second.path.exists()


def test_waiting_for_a_holder_takes_the_folder_once_it_is_gone(tmp_path, caplog):
    holder = _holder(tmp_path / "cache")
    lock = FolderLock(tmp_path / "cache", "mmdlrm, filling the data cache", "")
    waiter = threading.Thread(target=lock.acquire, kwargs={"wait": True})
    with caplog.at_level(logging.INFO, logger="mmdlrm"):
        waiter.start()
        while f"waiting for process {holder.pid}" not in caplog.text:
            waiter.join(0.05)
            assert waiter.is_alive()
        holder.kill()
        holder.wait()
        waiter.join(60)
    assert lock.held
    lock.release()


def test_a_full_disk_is_found_however_it_is_wrapped(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("writer failed") from err
    except RuntimeError as wrapped:
        assert no_space(wrapped) is full

    class Wrapped(BaseException):  # as torch.distributed.checkpoint's CheckpointException carries each rank's error
        failures = {0: (full, None)}

    assert no_space(Wrapped()) is full
    assert no_space(OSError(errno.EACCES, "Permission denied")) is None
    with pytest.raises(NoSpace, match=f"^no space left on {tmp_path} \\(writing x.bin\\); kept: all$"):
        with naming_full_disk(tmp_path, lambda: "kept: all"):
            raise OSError(errno.ENOSPC, "No space left on device", "x.bin")
    with pytest.raises(PermissionError):
        with naming_full_disk(tmp_path, lambda: "kept: all"):
            raise PermissionError(errno.EACCES, "Permission denied")
