"""One writer per run directory: a live holder is refused by name, a dead or stale one is taken over."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from optiml_jax import run_lock

HOLDER = r"""
import sys, time
from optiml_jax.run_lock import RunLock
RunLock(sys.argv[1], heartbeat_s=0.2).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _start_holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_live_holder_is_refused_by_pid_and_host_then_taken_over_when_gone(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(run_lock.RunDirLocked) as e:
            run_lock.RunLock(tmp_path).acquire()
        msg = str(e.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in msg and str(tmp_path) in msg
        assert "\n" not in msg
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up: the record stays, the kernel drops the flock
        proc.wait()
    record = json.loads((tmp_path / run_lock.LOCK_FILE).read_text())
    assert record["pid"] == proc.pid and "released" not in record
    lock = run_lock.RunLock(tmp_path).acquire()
    try:
        assert lock.took_over is not None and lock.took_over["pid"] == proc.pid
        assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    # A clean release leaves a record that the next run takes without a warning.
    with run_lock.RunLock(tmp_path) as again:
        assert again.took_over is None
        with pytest.raises(run_lock.RunDirLocked):  # and a second holder in this very process is refused too
            run_lock.RunLock(tmp_path).acquire()


def test_heartbeat_keeps_the_file_fresh(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        path = tmp_path / run_lock.LOCK_FILE
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        deadline = time.time() + 10
        while time.time() - path.stat().st_mtime > 100 and time.time() < deadline:
            time.sleep(0.05)
        assert time.time() - path.stat().st_mtime < 100
    finally:
        proc.kill()
        proc.wait()


def _write_foreign_record(directory, age_s: float) -> None:
    # A holder on another host of a shared file system, where flock may not reach: only its heartbeat tells.
    path = directory / run_lock.LOCK_FILE
    path.write_text(json.dumps({"host": "other-host-7", "pid": 4242, "started": "2026-12-01T00:00:00+00:00",
                                "command": "python -m optiml_jax.train ..."}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_record_from_another_host_is_judged_by_its_heartbeat(tmp_path):
    _write_foreign_record(tmp_path, age_s=5)
    with pytest.raises(run_lock.RunDirLocked, match=r"pid 4242 on host other-host-7.*heartbeat is 5 s old"):
        run_lock.RunLock(tmp_path, stale_after_s=60).acquire()
    _write_foreign_record(tmp_path, age_s=600)
    with run_lock.RunLock(tmp_path, stale_after_s=60) as lock:
        assert lock.took_over["host"] == "other-host-7"


def test_unwritable_directory_is_a_user_error(tmp_path):
    with pytest.raises(run_lock.UserError, match="cannot create run.lock"):
        run_lock.RunLock(tmp_path / "does" / "not" / "exist").acquire()
