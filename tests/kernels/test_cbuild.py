import ctypes

import pytest

from kernels import cbuild

SOURCE = "long twice(long x) { return 2 * x; }\n"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded yet in this process."""
    monkeypatch.setenv("SCALING_KERNEL_CACHE", str(tmp_path / "cache"))
    cbuild.load.cache_clear()
    yield tmp_path
    cbuild.load.cache_clear()


def test_builds_once_and_reuses_the_library(fresh):
    source = fresh / "twice.c"
    source.write_text(SOURCE)
    lib = cbuild.load(source)
    lib.twice.argtypes, lib.twice.restype = [ctypes.c_long], ctypes.c_long
    assert lib.twice(21) == 42
    (built,) = (fresh / "cache").glob("twice-*.so")
    stamp = built.stat().st_mtime_ns
    cbuild.load.cache_clear()
    cbuild.load(source)
    assert [p.name for p in (fresh / "cache").iterdir()] == [built.name]  # no temporary left, no rebuild
    assert built.stat().st_mtime_ns == stamp


def test_a_changed_source_gets_its_own_build(fresh):
    source = fresh / "twice.c"
    source.write_text(SOURCE)
    cbuild.load(source)
    source.write_text(SOURCE.replace("2 * x", "x + x"))
    cbuild.load.cache_clear()
    cbuild.load(source)
    assert len(list((fresh / "cache").glob("twice-*.so"))) == 2


def test_a_missing_compiler_is_named(fresh, monkeypatch):
    source = fresh / "twice.c"
    source.write_text(SOURCE)
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    with pytest.raises(cbuild.BuildError, match="no C compiler: .*no-such-cc.*install gcc or set CC"):
        cbuild.load(source)


def test_a_compile_error_shows_the_compiler_message(fresh):
    source = fresh / "broken.c"
    source.write_text("long broken(long x) { return x +; }\n")
    with pytest.raises(cbuild.BuildError, match="building broken.c failed(.|\n)*error"):
        cbuild.load(source)
    assert not list((fresh / "cache").glob("*.so"))
