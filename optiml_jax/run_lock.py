"""One writer per run directory: an advisory lock file that names its holder.

``MODEL_DIR/run.lock`` holds a JSON record of the process that writes the directory (host, pid, process start
time, command, heartbeat). A second run into a live directory is refused with one line that names that process
and host; a lock whose process is gone is taken over with a warning.

Liveness is decided in two ways, because neither works everywhere:

* ``fcntl.flock`` on the open lock file: the kernel drops it when the holder dies (SIGKILL included), which is
  exact on one host and on network file systems that forward locks;
* a heartbeat (the file's mtime, refreshed by a background thread every `HEARTBEAT_S` seconds): a record from
  another host whose heartbeat is older than `STALE_AFTER_S` is stale, for file systems where flock does not
  cross hosts. On the same host the recorded pid and its start time are checked directly.

`filelock` (the usual library) locks but does not record or report the holder, nor tell a dead holder on
another host from a live one, which is what the messages and the take-over need.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import sys
import threading
import time
from typing import Any

from optiml_jax.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class RunDirLocked(UserError):
    """Another live process is writing the run directory."""


def _process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a live holder from a reused pid."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields after its last ')' are plain.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now_start = _process_start(pid)
    return start is None or now_start is None or now_start == start


def describe_holder(record: dict[str, Any]) -> str:
    """``pid 123 on host h (since ..., command: ...)`` for messages."""
    cmd = record.get("command", "")
    cmd = cmd if len(cmd) <= 160 else cmd[:157] + "..."
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} (since {record.get('started', '?')}"
            + (f", command: {cmd}" if cmd else "") + ")")


class RunLock:
    """Holds ``directory/run.lock`` for the life of a run; use as a context manager or call `release`.

    Args:
      directory: the run directory (must exist and be writable).
      what: how the directory is named in messages (e.g. "MODEL_DIR").
      stale_after_s: a record from another host with an older heartbeat is considered stale.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "MODEL_DIR",
                 stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S):
        self.path = pathlib.Path(directory) / LOCK_FILE
        self.what = what
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.took_over: dict[str, Any] | None = None  # the stale record that was replaced, if any
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, fd: int) -> dict[str, Any] | None:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        if not raw.strip():
            return None
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"host": "?", "pid": "?", "unreadable": True}
        return rec if isinstance(rec, dict) else None

    def acquire(self) -> "RunLock":
        """Takes the lock or raises RunDirLocked naming the holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.what}={str(self.path.parent)!r}: cannot create {self.path.name} "
                            f"({e.strerror}); choose a writable folder") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                rec = self._read(fd) or {}
                raise RunDirLocked(
                    f"{self.what}={str(self.path.parent)!r} is in use by {describe_holder(rec)}; wait for that run "
                    f"to finish or stop it, or choose another {self.what}") from None
            rec = self._read(fd)
            if rec and not rec.get("released"):
                if not rec.get("unreadable"):  # a garbled record names no holder that could still be alive
                    self._check_stale(rec)
                self.took_over = rec
            self._write(fd, self._record())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self.took_over is not None:
            logger.warning("%s: took over the stale lock of %s (that process is gone)", self.path,
                           describe_holder(self.took_over))
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _check_stale(self, rec: dict[str, Any]) -> None:
        """Raises RunDirLocked unless the record's process is provably gone."""
        same_host = rec.get("host") == socket.gethostname()
        pid = rec.get("pid")
        if same_host and isinstance(pid, int):
            if pid != os.getpid() and _pid_alive(pid, rec.get("start_ticks")):
                raise RunDirLocked(
                    f"{self.what}={str(self.path.parent)!r} is in use by {describe_holder(rec)} (the process is "
                    f"alive); wait for it to finish or stop it, or choose another {self.what}")
            return
        age = self._age()  # the heartbeat thread refreshes the file's mtime
        if age < self.stale_after_s:
            raise RunDirLocked(
                f"{self.what}={str(self.path.parent)!r} is in use by {describe_holder(rec)}: its heartbeat is "
                f"{age:.0f} s old (stale after {self.stale_after_s:.0f} s); if that run is dead, wait "
                f"{self.stale_after_s - age:.0f} s and retry, or choose another {self.what}")

    def _age(self) -> float:
        return max(time.time() - self.path.stat().st_mtime, 0.0)

    @staticmethod
    def _record() -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start_ticks": _process_start(pid),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}

    @staticmethod
    def _write(fd: int, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError as e:  # a vanished or read-only file must not kill training
                logger.warning("run lock heartbeat failed: %s", e)

    def release(self) -> None:
        """Marks the record released and drops the lock (the file stays: unlinking it would race a waiter)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            rec = self._record()
            rec["released"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            self._write(self._fd, rec)
        except OSError as e:
            logger.warning("could not mark %s released: %s", self.path, e)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
