import importlib.util
import itertools
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kernels import selective_scan as scan_module
from kernels.selective_scan import (
    CHUNK,
    ENV_VAR,
    selective_scan,
    selective_scan_chunked,
    selective_scan_cpu,
    selective_scan_impl,
    selective_scan_ref,
    selective_scan_triton,
    triton_scan,
)
from kernels.selective_scan.cpu import CHUNK as CPU_CHUNK
from kernels.selective_scan.triton_scan import BLOCK_D, CHUNK_T

ROOT = Path(__file__).resolve().parents[2]

# Every path computes in fp32 and rounds once to u's dtype. In fp32 the paths differ by
# summation order (a matmul readout, a hand-written adjoint against autograd's): observed errors
# stay below 1.5e-6 of each tensor's largest magnitude up to L = 3 * CHUNK - 1 (the largest,
# ddelta_bias, sums over batch and time), so compare relative to that magnitude, floored at 1
# for tensors near 0: atol = tol * max(max|ref|, 1). In bf16 the rounded results differ by at
# most an ulp (2^-8 relative) where the fp32 ones straddle a rounding boundary: allow two.
TOLERANCES = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}

LENGTHS = [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK - 1]  # odd lengths and chunk boundaries
NAMES = ("output", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
OPTIONS = ("D", "z", "delta_bias", "delta_softplus")

requires_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def scan_inputs(L, dtype, b=2, d=6, n=5, seed=0):
    """u, delta, A, B, C, D, z, delta_bias in the ranges of mamba_ssm's own scan tests; the
    activations in `dtype`, the parameters A, D, delta_bias in fp32 as a Mamba layer keeps them.
    d and n are not powers of two, so the Triton kernel's masks are exercised."""
    g = torch.Generator().manual_seed(seed)
    u, z = torch.randn(2, b, d, L, generator=g)
    delta = 0.5 * torch.rand(b, d, L, generator=g)
    A = -0.5 * torch.rand(d, n, generator=g)
    B, C = torch.randn(2, b, n, L, generator=g)
    D = torch.randn(d, generator=g)
    delta_bias = 0.5 * torch.rand(d, generator=g)
    tensors = (u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, z.to(dtype), delta_bias)
    return [x.requires_grad_() for x in tensors]


def _run(fn, inputs, grad_out, use):
    """Output and the gradients of all eight inputs (zeros for an option switched off)."""
    u, delta, A, B, C, D, z, delta_bias = inputs
    out = fn(
        u,
        delta,
        A,
        B,
        C,
        D=D if use["D"] else None,
        z=z if use["z"] else None,
        delta_bias=delta_bias if use["delta_bias"] else None,
        delta_softplus=use["delta_softplus"],
    )
    return (out, *torch.autograd.grad(out, inputs, grad_out, allow_unused=True, materialize_grads=True))


def _assert_close(actual, expected, dtype, what):
    err = (actual.float() - expected.float()).abs()
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual,
        expected,
        atol=tol * max(expected.abs().max().item(), 1.0),
        rtol=tol,
        msg=lambda m: f"{what} ({dtype}): max abs error {err.max():.3e}, mean {err.mean():.3e}\n{m}",
    )


def _compare(fn, L, dtype, use, n=5):
    inputs = scan_inputs(L, dtype, n=n)
    grad_out = torch.randn(2, 6, L, generator=torch.Generator().manual_seed(1)).to(dtype)
    fast, ref = _run(fn, inputs, grad_out, use), _run(selective_scan_ref, inputs, grad_out, use)
    assert fast[0].dtype == ref[0].dtype == dtype
    for what, a, b in zip(NAMES, fast, ref):
        _assert_close(a, b, dtype, what)


ALL_ON = dict.fromkeys(OPTIONS, True)


# The fast CPU paths, each with its own chunk length (the C kernel saves a state every CPU_CHUNK).
FAST_CPU = {"chunked": selective_scan_chunked, "cpu": selective_scan_cpu}
CPU_LENGTHS = [1, 7, CPU_CHUNK, CPU_CHUNK + 1, 3 * CPU_CHUNK - 1]


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("path,L", [("chunked", L) for L in LENGTHS] + [("cpu", L) for L in CPU_LENGTHS])
def test_fast_cpu_path_matches_ref(path, L, dtype):
    _compare(FAST_CPU[path], L, dtype, ALL_ON)


@pytest.mark.parametrize("path", FAST_CPU)
@pytest.mark.parametrize("n", [1, 16, 17])
def test_fast_cpu_path_matches_ref_at_state_sizes(path, n):
    # 16, Mamba's, has its own compiled loops in the C kernel; 17 a vector and a remainder.
    _compare(FAST_CPU[path], CPU_CHUNK + 3, torch.float32, ALL_ON, n=n)


@pytest.mark.parametrize("path", FAST_CPU)
@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=len(OPTIONS))))
def test_fast_cpu_path_matches_ref_with_and_without_options(path, flags):
    _compare(FAST_CPU[path], max(CHUNK, CPU_CHUNK) + 1, torch.float32, dict(zip(OPTIONS, flags)))


@pytest.mark.parametrize("path", FAST_CPU)
@pytest.mark.parametrize("scale", [1e-4, 40.0])
def test_fast_cpu_path_matches_ref_at_extreme_decays(path, scale):
    # delta + delta_bias up to 1e-4 (states that barely decay) or up to 40, so delta |A| reaches
    # 640 in one step (e^-640 underflows to 0: full resets), where a log-space scan overflows.
    inputs = scan_inputs(3 * CHUNK - 1, torch.float32, n=16)
    with torch.no_grad():
        inputs[1].mul_(scale)
        inputs[7].mul_(scale)
        inputs[2].copy_(-torch.arange(1.0, 17.0).expand(6, 16))
    grad_out = torch.randn(2, 6, 3 * CHUNK - 1, generator=torch.Generator().manual_seed(1))
    use = dict.fromkeys(OPTIONS, True) | {"delta_softplus": False}
    fast, ref = _run(FAST_CPU[path], inputs, grad_out, use), _run(selective_scan_ref, inputs, grad_out, use)
    for what, a, b in zip(NAMES, fast, ref):
        assert a.isfinite().all(), what
        _assert_close(a, b, torch.float32, what)


def test_ref_is_the_recurrence():
    # One channel, one state, no options: h_t = e^{delta A} h_{t-1} + delta B u_t, y_t = C h_t.
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    delta, A = torch.full((1, 1, 3), 0.5), torch.tensor([[-2.0]])
    B, C = torch.ones(1, 1, 3), torch.full((1, 1, 3), 2.0)
    decay = math.exp(0.5 * -2.0)
    h1 = 0.5 * 1.0
    h2 = decay * h1 + 0.5 * 2.0
    h3 = decay * h2 + 0.5 * 3.0
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C), torch.tensor([[[2 * h1, 2 * h2, 2 * h3]]]))


def test_chunked_keeps_no_full_state_for_backward():
    # What autograd keeps for the backward: nine (b, d, L) tensors (u twice, delta, the softplus
    # input, z, the gate's two operands, the scan's time-major delta and delta * u), B and C
    # (b, n, L), one (b, d, n) state per chunk, and A, D, delta_bias: nothing of the (b, d, L, n)
    # size the reference keeps several of.
    b, d, L, n = 2, 32, 4 * CHUNK, 16
    inputs = scan_inputs(L, torch.float32, b=b, d=d, n=n)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        selective_scan_chunked(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    assert max(saved) == b * d * L
    assert sum(saved) <= 9 * b * d * L + 2 * b * n * L + (L // CHUNK) * b * d * n + d * n + 3 * d


def test_cpu_keeps_no_full_state_for_backward():
    # The C kernel keeps u, delta and z (b, d, L), time-major B and C (b, L, n), one (b, d, n)
    # state per CPU_CHUNK steps, and A, D, delta_bias: the softplus and gate are inside it.
    b, d, L, n = 2, 32, 4 * CPU_CHUNK, 16
    inputs = scan_inputs(L, torch.float32, b=b, d=d, n=n)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        selective_scan_cpu(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    assert max(saved) == b * d * L
    assert sum(saved) == 3 * b * d * L + 2 * b * n * L + (L // CPU_CHUNK) * b * d * n + d * n + 2 * d


def test_dispatch_follows_environment(monkeypatch, caplog):
    inputs = [x.detach() for x in scan_inputs(9, torch.float32)]
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(scan_module, "_announced", set())
    assert selective_scan_impl("cpu") == "cpu"
    with caplog.at_level(logging.INFO, logger="kernels.selective_scan"):
        assert torch.equal(selective_scan(*inputs), selective_scan_cpu(*inputs))
        selective_scan(*inputs)
    assert [r.getMessage() for r in caplog.records] == ["selective_scan: the cpu path on cpu"]
    monkeypatch.setenv(ENV_VAR, "ref")
    assert selective_scan_impl("cpu") == "ref"
    assert torch.equal(selective_scan(*inputs), selective_scan_ref(*inputs))
    monkeypatch.setenv(ENV_VAR, "chunked")
    assert torch.equal(selective_scan(*inputs), selective_scan_chunked(*inputs))
    monkeypatch.setenv(ENV_VAR, "mamba")
    with pytest.raises(ValueError, match="valid: ref, chunked, cpu, triton"):
        selective_scan(*inputs)


def test_cpu_without_a_compiler_falls_back_to_chunked_and_says_why(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(scan_module, "_c_kernel_error", lambda: "no C compiler: install gcc or set CC")
    monkeypatch.setattr(scan_module, "_announced", set())
    assert selective_scan_impl("cpu") == "chunked"
    with pytest.warns(RuntimeWarning, match="chunked PyTorch path, several times slower: no C compiler"):
        scan_module._announce(torch.device("cpu"), "chunked")
    monkeypatch.setenv(ENV_VAR, "cpu")
    with pytest.raises(RuntimeError, match="SCALING_SCAN_IMPL=cpu, but the C kernel does not build: no C compiler"):
        selective_scan_impl("cpu")


def test_cpu_path_refuses_other_devices():
    with pytest.raises(ValueError, match="takes CPU tensors, got meta"):
        selective_scan_cpu(*(torch.empty(x.shape, device="meta") for x in scan_inputs(3, torch.float32)[:5]))


def test_cuda_without_triton_warns_once(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(scan_module, "triton", None)
    monkeypatch.setattr(scan_module, "_announced", set())
    assert selective_scan_impl("cuda") == "chunked"
    with pytest.warns(RuntimeWarning, match="pip install triton"):
        scan_module._announce(torch.device("cuda"), "chunked")
    scan_module._announce(torch.device("cuda"), "chunked")  # a second call stays quiet (-W error would fail here)
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="pip install triton"):
        selective_scan_impl("cuda")


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
    fast, ref = _run(selective_scan_triton, inputs, grad_out, use), _run(selective_scan_ref, inputs, grad_out, use)
    for what, actual, expected in zip(NAMES, fast, ref):
        _assert_close(actual, expected, dtype, what)  # dtypes too: each gradient in its input's dtype


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
    fast, ref = _run(selective_scan_triton, inputs, grad_out, use), _run(selective_scan_ref, inputs, grad_out, use)
    for what, a, b in zip(NAMES, fast, ref):
        assert a.isfinite().all(), what
        _assert_close(a, b, torch.float32, what)


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
    kernels = [(triton_scan._scan_forward_kernel, {"SAVE_STARTS": True}), (triton_scan._scan_backward_kernel, {})]
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
