import itertools
import logging
import math

import pytest
import torch

from kernels import selective_scan as scan_module
from kernels.selective_scan import (
    CHUNK,
    ENV_VAR,
    selective_scan,
    selective_scan_chunked,
    selective_scan_cpu,
    selective_scan_impl,
    selective_scan_ref,
)
from kernels.selective_scan.cpu import CHUNK as CPU_CHUNK
from tests.kernels.scan_cases import NAMES, OPTIONS, TOLERANCES, assert_close, run_scan, scan_inputs

# The Triton path has its own tests (test_selective_scan_triton.py): they run under Triton's interpreter.

LENGTHS = [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK - 1]  # odd lengths and chunk boundaries


def _compare(fn, L, dtype, use, n=5):
    inputs = scan_inputs(L, dtype, n=n)
    grad_out = torch.randn(2, 6, L, generator=torch.Generator().manual_seed(1)).to(dtype)
    fast, ref = run_scan(fn, inputs, grad_out, use), run_scan(selective_scan_ref, inputs, grad_out, use)
    assert fast[0].dtype == ref[0].dtype == dtype
    for what, a, b in zip(NAMES, fast, ref):
        assert_close(a, b, dtype, what)


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
    fast, ref = run_scan(FAST_CPU[path], inputs, grad_out, use), run_scan(selective_scan_ref, inputs, grad_out, use)
    for what, a, b in zip(NAMES, fast, ref):
        assert a.isfinite().all(), what
        assert_close(a, b, torch.float32, what)


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
    monkeypatch.setattr(scan_module._dispatch, "_announced", set())
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
    monkeypatch.setattr(scan_module._dispatch, "_announced", set())
    assert selective_scan_impl("cpu") == "chunked"
    inputs = [x.detach() for x in scan_inputs(9, torch.float32)]
    with pytest.warns(
        RuntimeWarning, match="slower chunked path, since cpu: the C kernel does not build: no C compiler"
    ):
        assert torch.equal(selective_scan(*inputs), selective_scan_chunked(*inputs))
    monkeypatch.setenv(ENV_VAR, "cpu")
    with pytest.raises(RuntimeError, match="SCALING_SCAN_IMPL=cpu, but the C kernel does not build: no C compiler"):
        selective_scan_impl("cpu")


def test_cpu_path_refuses_other_devices():
    with pytest.raises(ValueError, match="takes CPU tensors, got meta"):
        selective_scan_cpu(*(torch.empty(x.shape, device="meta") for x in scan_inputs(3, torch.float32)[:5]))


def test_cuda_without_triton_warns_once(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(scan_module, "triton", None)
    monkeypatch.setattr(scan_module._dispatch, "_announced", set())
    assert selective_scan_impl("cuda") == "chunked"
    with pytest.warns(
        RuntimeWarning, match="slower chunked path, since triton: triton does not import.*pip install triton"
    ):
        assert scan_module._dispatch("cuda") is selective_scan_chunked
    scan_module._dispatch("cuda")  # a second call stays quiet (-W error would fail here)
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="pip install triton"):
        selective_scan_impl("cuda")
