"""tasks.layout: the run folder's lock."""

import errno
import fcntl
import os

import pytest

from tasks.layout import RunDir


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
