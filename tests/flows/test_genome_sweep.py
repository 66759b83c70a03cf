"""End to end through `scaling run` on a tiny genome in HG38's formats: FASTA + BED -> windows -> DeepSpeed."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.conftest import scaling


def tiny_genome(root: Path) -> Path:
    """Two contigs of a noisy repeat (learnable, unlike random bases), soft-masked in stretches, with an N gap."""
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "hg38.ml.fa", "w") as fh:
        for name, n in (("chr1", 24_000), ("chr2", 8_000)):
            bases = np.resize(np.array(list("ACGGTCATTGCA")), n)
            noisy = rng.random(n) < 0.1
            bases[noisy] = rng.choice(list("ACGT"), noisy.sum())
            bases[n // 3 : n // 3 + 400] = np.char.lower(bases[n // 3 : n // 3 + 400])
            bases[n // 2 : n // 2 + 100] = "N"
            seq = "".join(bases)
            fh.write(f">{name}\n" + "".join(seq[i : i + 60] + "\n" for i in range(0, n, 60)))
    (root / "human-sequences.bed").write_text(
        "chr1\t0\t11000\ttrain\nchr1\t11000\t24000\ttrain\nchr2\t0\t6000\tvalid\nchr2\t6000\t8000\ttest\n"
    )
    return root


def test_genome_sweep_trains_on_windows_and_records_val_loss(tmp_path, prefect_env):
    genome = tiny_genome(tmp_path / "hg38")
    sweep = tmp_path / "dna.yaml"
    sweep.write_text(f"""
name: dna
data:
  source: hg38
  path: {genome}
  seq_len: 32
  val_tokens: 2048
architectures: [transformer++]
ladder: tiny
sizes: [t1]
tokens:
  counts: [30720]
lr:
  values: [3.0e-3]
train:
  batch_tokens: 1024
  eval_interval: 10
  checkpoint_interval: 20
  log_interval: 5
resources:
  concurrency: 1
  threads_per_rank: 1
  flops_per_s: 1.0e+9
fit:
  starts: 8
""")
    out = tmp_path / "out"
    scaling("run", sweep, "--output", out, env=prefect_env)

    runs = pq.read_table(out / "sweeps" / "dna" / "runs.parquet").to_pandas()
    assert list(runs.status) == ["completed"] and runs.steps[0] == 30
    assert runs.val_loss[0] < math.log(7) - 0.5, "loss falls well below the uniform start over 7 tokens"
    curves = pq.read_table(out / "sweeps" / "dna" / "curves.parquet").to_pandas()
    val = curves.val_loss.dropna()
    assert len(val) == 3 and val.iloc[-1] < val.iloc[0]

    manifest = json.loads(next((out / "data").glob("tokens-*/manifest.json")).read_text())
    assert manifest["source"] == "hg38" and manifest["intervals"] == {"train": 2, "valid": 1, "test": 1}
    assert manifest["tokens"] == {"train": 24_002, "val": 6_001}


def test_the_shipped_hg38_sweep_plans_or_fails_fast_without_its_data(tmp_path):
    missing = scaling("plan", "hg38", check=False)
    assert missing.returncode == 2 and "/data/hg38: no such folder" in missing.stderr
    assert "data.path" in missing.stderr and not missing.stdout
    plan = scaling("plan", "hg38", "--set", f"data.path={tiny_genome(tmp_path / 'hg38')}")
    assert "84 runs" in plan.stdout and "mamba" in plan.stdout and "40.7M" in plan.stdout
