"""tasks.data.digests: whole-content digests, computed once per file version."""

import os

import pytest

from tasks.data import digests


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_DIGEST_CACHE", str(tmp_path / "digests.json"))
    monkeypatch.setattr(digests, "_read", {})


def test_one_byte_anywhere_changes_the_digest(tmp_path):
    big = tmp_path / "shard.bin"
    data = bytearray(os.urandom(3 << 20))
    big.write_bytes(data)
    before = digests.file_digest(big)
    data[len(data) // 2] ^= 1  # the middle: neither the first nor the last MiB
    big.write_bytes(data)
    assert digests.file_digest(big) != before
    copy = tmp_path / "elsewhere.bin"
    copy.write_bytes(data)
    assert digests.file_digest(copy) == digests.file_digest(big)  # content, not path


def test_a_file_version_is_read_once(tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_text("one")
    first = digests.file_digest(f)
    assert (tmp_path / "digests.json").is_file()
    monkeypatch.setattr(digests, "_read", {})  # a new process: only the cache file remembers
    opened = []
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or pytest.fail("read again"))
    assert digests.file_digest(f) == first and not opened
    monkeypatch.undo()
    # The negative control: a new version of the file (new mtime) is read and digested anew.
    f.write_text("two")
    monkeypatch.setenv("SCALING_DIGEST_CACHE", str(tmp_path / "digests.json"))
    assert digests.file_digest(f) != first
