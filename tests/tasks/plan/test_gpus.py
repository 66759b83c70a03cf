"""tasks.plan.gpus: GPU-hours at a stated MFU, and a warning for a run too big for a GPU's memory."""

import dataclasses

import pytest

from tasks.config import load_sweep, parse_overrides
from tasks.plan import format_plan, plan_sweep
from tasks.plan.gpus import GPUS, gpu_hours, gpu_lines, memory_per_gpu
from tests.conftest import tiny_sweep


@pytest.fixture
def tiny(tmp_path):
    return plan_sweep(load_sweep(tiny_sweep(tmp_path), parse_overrides(["resources.mfu=0.5"])))


def a_1_3b_run(spec, **kw):
    """A 1.3B model at the paper's context, as the plan would hold it (no data needed to price it)."""
    model = {**spec.model, "vocab_size": 50_277}
    fields = dict(n_params=1_300_000_000, n_layer=24, d_model=2048, seq_len=2048, model=model)
    return dataclasses.replace(spec, **{**fields, "micro_batch_size": 8, "zero_stage": 0, "ranks": 1, **kw})


def test_gpu_hours_are_the_plan_s_flops_over_the_peak_at_the_mfu(tiny):
    h100, h200, a100 = GPUS
    assert gpu_hours(tiny, h100, 0.5) == pytest.approx(tiny.total_flops / (989e12 * 0.5) / 3600)
    assert gpu_hours(tiny, a100, 0.5) == pytest.approx(gpu_hours(tiny, h100, 0.5) * 989 / 312)
    assert gpu_hours(tiny, h200, 0.5) == gpu_hours(tiny, h100, 0.5)  # the same compute, more memory
    text = format_plan(tiny, 1, 0.5)
    assert "GPU-hours at 50% MFU (resources.mfu) of dense bf16 peak: H100 " in text
    assert "warning" not in text  # tiny models fit anywhere


def test_memory_counts_weights_gradients_adam_and_activations_sharded_by_zero(tiny):
    base = a_1_3b_run(tiny.runs[0])
    # 16 B/param of state, 34 B x 16,384 tokens x 2048 x 24 layers, 10 B x 16,384 x 50,277 logits
    assert memory_per_gpu(base) == pytest.approx(16 * 1.3e9 + 34 * 16384 * 2048 * 24 + 10 * 16384 * 50277)
    state = {
        z: memory_per_gpu(a_1_3b_run(tiny.runs[0], zero_stage=z, ranks=4)) - memory_per_gpu(base) for z in range(4)
    }
    assert state[0] == 0
    assert state[1] == pytest.approx(-8 * 1.3e9 * 3 / 4)  # AdamW's m and v over 4 ranks
    assert state[2] == pytest.approx(-12 * 1.3e9 * 3 / 4)  # and the gradients
    assert state[3] == pytest.approx(-16 * 1.3e9 * 3 / 4)  # and the weights


def test_a_run_too_big_for_a_gpu_is_named_with_what_to_change(tiny):
    fits = dataclasses.replace(tiny, runs=[a_1_3b_run(tiny.runs[0])])  # about 56 GB
    assert not [line for line in gpu_lines(fits, 0.4) if line.startswith("warning")]
    big = dataclasses.replace(tiny, runs=[a_1_3b_run(tiny.runs[0], micro_batch_size=16)])  # about 92 GB
    [warning] = [line for line in gpu_lines(big, 0.4) if line.startswith("warning")]
    assert "needs about 92 GB per GPU (ZeRO 0 over 1 rank(s), micro-batch 16)" in warning
    assert "one H100 or A100;" in warning and "H200" not in warning  # 141 GB holds it
    assert "train.micro_batch_size" in warning
