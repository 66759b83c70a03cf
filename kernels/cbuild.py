"""Builds a kernel's C source into a shared library with the machine's compiler, once, and loads it.

A plain C file compiled with gcc takes well under a second (no PyTorch headers, unlike a
torch C++ extension), and ctypes releases the GIL while a foreign function runs, so Python
threads can drive several cores through it.

The library is built for the CPU it runs on (-march=native), so it is cached under a key of
the source, the flags, the compiler's version and this CPU's model and feature flags: a home
directory shared by machines of different kinds (NFS on a cluster) gets one build per kind.
It is written to a temporary name and renamed into place, so ranks that build at the same
time never load a half-written file.

SCALING_KERNEL_CACHE sets the cache folder (default ~/.cache/scaling/kernels); CC the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
from functools import cache
from pathlib import Path

FLAGS = (
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-ffast-math",
    "-fopenmp-simd",
    "-fPIC",
    "-shared",
    "-std=c11",
)
"""-ffast-math lets gcc vectorise expf through glibc's libmvec; the kernels never rely on inf or
NaN semantics beyond a NaN input giving a NaN output. 512-bit vectors where the CPU has them
(gcc prefers 256 by default): a 16-float state is then one register (1.7x measured on the
selective scan's backward here)."""


class BuildError(RuntimeError):
    """The compiler is missing or rejected the source."""


def cache_dir() -> Path:
    return Path(os.environ.get("SCALING_KERNEL_CACHE", Path.home() / ".cache" / "scaling" / "kernels"))


def _compiler() -> str:
    return os.environ.get("CC", "gcc")


def _cpu_identity() -> str:
    """The CPU's model name and feature flags: what -march=native compiles for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))  # every core repeats them


def _key(source: Path) -> str:
    try:
        version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"no C compiler: `{_compiler()} --version` failed ({exc}); install gcc or set CC") from exc
    parts = [source.read_bytes(), " ".join(FLAGS).encode(), version.encode(), _cpu_identity().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


@cache
def load(source: Path) -> ctypes.CDLL:
    """The library built from `source`, compiled on the first call on this machine."""
    out = cache_dir() / f"{source.stem}-{_key(source)}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [_compiler(), *FLAGS, str(source), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise BuildError(f"building {source.name} failed: {' '.join(cmd)}\n{proc.stderr.strip()}")
        os.replace(tmp, out)
    return ctypes.CDLL(str(out))
