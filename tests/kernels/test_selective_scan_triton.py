import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kernels.selective_scan import selective_scan_ref, selective_scan_triton, triton_scan
from kernels.selective_scan.triton_scan import BLOCK_D, CHUNK_T
from tests.kernels.scan_cases import NAMES, OPTIONS, assert_close, run_scan, scan_inputs

ROOT = Path(__file__).resolve().parents[2]

requires_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# The Triton kernels, run on CPU tensors by Triton's interpreter in a subprocess (see
# test_triton_under_interpreter), where each program-step costs milliseconds: sizes stay small.
# d = BLOCK_D + 8 gives a full and a partial block of channels; n = 5 pads to BLOCK_N = 8, n = 16
# fills it. CHUNK_T = 4 (monkeypatched) puts chunk boundaries inside short sequences.
TRITON_CASES = [
    # L, dtype, options (D, z, delta_bias, delta_softplus), (b, d, n), CHUNK_T or None for the module's
    (1, torch.float32, (True, True, True, True), (2, 6, 5), None),
    (7, torch.float32, (False, False, False, False), (2, 6, 5), None),
    (7, torch.bfloat16, (True, True, True, True), (2, 6, 5), None),
    (CHUNK_T, torch.float32, (True, True, True, True), (1, 6, 5), None),
    (CHUNK_T + 1, torch.float32, (True, True, True, True), (1, BLOCK_D + 8, 5), None),
    (CHUNK_T + 1, torch.bfloat16, (True, False, True, True), (2, 6, 16), None),
    (2 * CHUNK_T + 3, torch.float32, (False, True, True, True), (1, 6, 16), None),
    # Each option alone and each left out, chunk boundaries at 4 and 8 and a 1-step last chunk.
    *((9, torch.float32, tuple(i == j for j in range(4)), (2, 6, 5), 4) for i in range(4)),
    *((9, torch.float32, tuple(i != j for j in range(4)), (2, 6, 5), 4) for i in range(4)),
    (9, torch.float32, (True, True, True, True), (2, BLOCK_D + 8, 5), 4),  # 4 programs, each its own scratch
]


def _compare_triton(L, dtype, use, b, d, n):
    inputs = scan_inputs(L, dtype, b=b, d=d, n=n)
    grad_out = torch.randn(b, d, L, generator=torch.Generator().manual_seed(1)).to(dtype)
    fast, ref = (
        run_scan(selective_scan_triton, inputs, grad_out, use),
        run_scan(selective_scan_ref, inputs, grad_out, use),
    )
    for what, actual, expected in zip(NAMES, fast, ref):
        assert_close(actual, expected, dtype, what)  # dtypes too: each gradient in its input's dtype


interpreted = pytest.mark.skipif(
    not INTERPRETED, reason="runs under TRITON_INTERPRET=1 in test_triton_under_interpreter's subprocess"
)


@requires_triton
@interpreted
@pytest.mark.parametrize("L,dtype,flags,shape,chunk", TRITON_CASES)
def test_triton_matches_ref(L, dtype, flags, shape, chunk, monkeypatch):
    # The output and all eight gradients from the forward and backward kernels; zeros where an
    # option is off (the reference's, materialised), so a gradient leaking into one fails.
    if chunk is not None:
        monkeypatch.setattr(triton_scan, "CHUNK_T", chunk)
    _compare_triton(L, dtype, dict(zip(OPTIONS, flags)), *shape)


@requires_triton
@interpreted
@pytest.mark.parametrize("scale", [1e-4, 40.0])
def test_triton_matches_ref_at_extreme_decays(scale, monkeypatch):
    # As for the CPU paths: no decay, or e^-640 = 0 (full resets), where recovering h_{t-1} by
    # dividing by the decay, instead of recomputing it from the chunk's start, would fail.
    monkeypatch.setattr(triton_scan, "CHUNK_T", 4)
    L = 13
    inputs = scan_inputs(L, torch.float32, n=16)
    with torch.no_grad():
        inputs[1].mul_(scale)
        inputs[7].mul_(scale)
        inputs[2].copy_(-torch.arange(1.0, 17.0).expand(6, 16))
    grad_out = torch.randn(2, 6, L, generator=torch.Generator().manual_seed(1))
    use = dict.fromkeys(OPTIONS, True) | {"delta_softplus": False}
    fast, ref = (
        run_scan(selective_scan_triton, inputs, grad_out, use),
        run_scan(selective_scan_ref, inputs, grad_out, use),
    )
    for what, a, b in zip(NAMES, fast, ref):
        assert a.isfinite().all(), what
        assert_close(a, b, torch.float32, what)


class _Allocations(TorchDispatchMode):
    """Records the bytes of every tensor that torch ops return while active: bytes, since
    Triton's interpreter copies kernel arguments as untyped (uint8) storage."""

    def __init__(self):
        super().__init__()
        self.nbytes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.nbytes += [x.numel() * x.element_size() for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
        return out


@requires_triton
@interpreted
def test_triton_keeps_no_full_state_for_backward():
    # Saved for the backward: u, delta, z (b, d, L), B and C (b, n, L), A, D, delta_bias, and one
    # (b, d, n) state per CHUNK_T steps. Allocated in it, besides the gradients: the scratch (one
    # (CHUNK_T, BLOCK_D, n) tile per program), dB and dC partials (b, d / BLOCK_D, L, n) and the
    # dA partial (b, d, n). Nothing of the (b, d, L, n) size the reference keeps several of.
    b, d, L, n = 1, BLOCK_D, 2 * CHUNK_T, 16
    inputs = scan_inputs(L, torch.float32, b=b, d=d, n=n)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        out = selective_scan_triton(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    assert max(saved) == b * d * L
    assert sum(saved) == 3 * b * d * L + 2 * b * n * L + (L // CHUNK_T) * b * d * n + d * n + 2 * d
    with torch.no_grad():  # nothing to differentiate: the forward alone, saving no states
        assert torch.equal(selective_scan_triton(*inputs[:5], *inputs[5:], delta_softplus=True), out)
    with _Allocations() as allocations:
        torch.autograd.grad(out, inputs, torch.ones_like(out))
    scratch = b * CHUNK_T * BLOCK_D * n  # the largest, and still L / CHUNK_T times smaller than (b, d, L, n)
    assert max(allocations.nbytes) == 4 * scratch < 4 * b * d * L * n


def _arg_type(name, bf16):
    if name.endswith("_ptr"):
        return "*bf16" if name in bf16 else "*fp32"
    return "i32"


@requires_triton
@pytest.mark.skipif(INTERPRETED, reason="the interpreter stands in for the compiler")
@pytest.mark.parametrize("flags", [(True, True, True, True), (False, False, False, False)])
def test_triton_kernels_compile_for_gpu(flags):
    # No GPU here, so the interpreter checks what the kernels compute; this checks that Triton's
    # compiler (stricter: types carried around loops, constexpr branches) turns them into
    # machine code for an H100, with bf16 activations.
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    bf16 = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "grad_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
    options = dict(zip(("HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS"), flags))
    options |= {"BLOCK_D": BLOCK_D, "BLOCK_N": 16, "CHUNK_T": CHUNK_T}
    from kernels.selective_scan import triton_kernels

    kernels = [(triton_kernels.scan_forward_kernel, {"SAVE_STARTS": True}), (triton_kernels.scan_backward_kernel, {})]
    for kernel, extra in kernels:
        constants = options | extra
        signature = {name: "constexpr" if name in constants else _arg_type(name, bf16) for name in kernel.arg_names}
        source, target = ASTSource(kernel, signature, constants), GPUTarget("cuda", 90, 32)
        compiled = triton.compile(source, target=target, options={"enable_fp_fusion": triton_scan.FP_FUSION})
        assert compiled.asm["cubin"], kernel.__name__


@requires_triton
@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter run")
def test_triton_under_interpreter():
    # TRITON_INTERPRET must be set before triton defines the kernels (at import), and this
    # process may have imported it already, so the interpreted tests run in a fresh one.
    expected = len(TRITON_CASES) + 2 + 1  # the cases, two extreme decays, the memory test
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "test_triton"]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(rf"\b{expected} passed", proc.stdout), proc.stdout[-2000:]
