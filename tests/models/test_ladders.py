import subprocess
import sys
from pathlib import Path

from models.ladders import ARCH_NAMES
from models.registry import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, where nothing has imported torch yet."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_ladders_import_without_torch():
    proc = _python("import sys, models.ladders; assert 'torch' not in sys.modules, 'torch imported'")
    assert proc.returncode == 0, proc.stderr


def test_the_torch_check_can_fail():
    # Negative control: the same check on the registry, which builds models, must fail.
    proc = _python("import sys, models.registry; assert 'torch' not in sys.modules, 'torch imported'")
    assert proc.returncode != 0
    assert "AssertionError: torch imported" in proc.stderr


def test_registry_names_the_ladders_architectures_in_order():
    assert tuple(ARCHITECTURES) == ARCH_NAMES


def test_registry_refuses_a_name_list_that_drifted():
    proc = _python("import models.ladders as l; l.ARCH_NAMES = l.ARCH_NAMES[:-1]; import models.registry")
    assert proc.returncode != 0
    assert "RuntimeError: models.ladders.ARCH_NAMES" in proc.stderr and "differ" in proc.stderr
