"""The throughput benchmark on a tiny run: real DeepSpeed training of t1 models, about 15 s a run."""

import tasks.bench
from tests.tasks.bench.support import RATIO, TINY_SETS, table


def test_throughput_trains_the_baseline_first_and_rates_the_others_against_it(capsys, tmp_path):
    argv = ["throughput", "--archs", "hyena", "--sizes", "t1", "--steps", "16", "--threads", "1", "--peak-size", "256"]
    assert tasks.bench.main([*argv, "--output", str(tmp_path), *TINY_SETS]) == 0
    out = capsys.readouterr().out
    assert "sizes t1, seq_len 32, 1024 tokens a step, 16 steps, 1 threads" in out
    rows = table(out, "steady tokens/s")
    # transformer++ was not asked for, but every ratio is against it, so it ran, first.
    assert list(rows) == ["transformer++ t1", "hyena t1"]
    assert rows["transformer++ t1"]["vs transformer++"] == "1.00x"
    assert RATIO.fullmatch(rows["hyena t1"]["vs transformer++"])
    for row in rows.values():
        # No upper bound: on a CPU without bf16 units the measured peak is an emulated one (1 GFLOP/s
        # on a 2-core AVX2 machine), below what even a t1 model's training reaches.
        assert float(row["tokens/s"]) > 0 and float(row["MFU"].rstrip("%")) > 0
        # The plan's estimate came from the model's measured step, and is set beside the run's own time.
        assert float(row["est s"]) > 0 and float(row["run s"]) > 0 and RATIO.fullmatch(row["est / run"])
    assert "the plan's estimate (from its models' measured steps)" in " ".join(out.split())
