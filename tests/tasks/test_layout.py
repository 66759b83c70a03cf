"""tasks.layout: the run folder's lock."""

import errno
import fcntl
import os
import threading

import pytest

from tasks.layout import RunDir, _lock_holder


def test_a_held_lock_keeps_a_second_launcher_out_until_released(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        fd = os.open(run.lock_file, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # what a second launcher meets, in this or another process
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert f"pid {os.getpid()}" in run.lock_file.read_text()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the negative control: released, it can be taken
    os.close(fd)


def test_a_file_system_without_flock_is_named(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match="does not support flock.*--output or \\$SCALING_OUTPUT"):
        with RunDir(tmp_path / "run").lock():
            pass


def test_a_waiter_names_a_holder_that_writes_its_line_just_after_taking_the_lock(tmp_path):
    # The race CI met: the waiter read the lock file between the holder's flock and its line.
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    holder = os.open(run.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    late = threading.Timer(0.3, os.pwrite, (holder, b"node7 pid 42\n", 0))
    late.start()
    fd = os.open(run.lock_file, os.O_RDWR)
    try:
        assert _lock_holder(fd, patience=0) == "another launcher"  # the negative control: read too early
        assert _lock_holder(fd) == "node7 pid 42"
    finally:
        late.join()
        os.close(fd)
        os.close(holder)
