import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from tasks.config import (
    PROJECT_ROOT,
    ConfigError,
    DataConfig,
    SweepConfig,
    load_sweep,
    parse_overrides,
    sweep_from_dict,
)
from tests.conftest import scaling, tiny_sweep

GOOD = """
name: t
architectures: [transformer++]
ladder: tiny
lr: {values: [1.0e-3]}
"""


def write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_shipped_sweeps_validate():
    shipped = sorted((PROJECT_ROOT / "deployments" / "sweeps").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"sample", "pile", "hg38"}
    for path in shipped:
        assert load_sweep(path).name == path.stem


def test_a_valid_file_loads(tmp_path):
    cfg = load_sweep(tiny_sweep(tmp_path))
    assert cfg.sizes == ["t1", "t2"] and cfg.train.batch_tokens == 1024 and cfg.train.micro_batch_size is None


def test_pile_sweep_is_the_papers_setup():
    cfg = load_sweep("deployments/sweeps/pile.yaml")
    assert cfg.train.batch_tokens == 2**19 and cfg.data.seq_len == 2048
    assert cfg.optimizer.betas == (0.9, 0.95) and cfg.optimizer.weight_decay == 0.1
    assert cfg.optimizer.grad_clip == 1.0 and cfg.tokens.per_param == 20
    assert [s.name for s in cfg.size_ladder()] == ["125m", "350m", "760m", "1.3b"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: t\narchitectures: [mamba9]\nlr: {values: [1.0e-3]}\n", ["architectures", "mamba9", "transformer++"]),
        (GOOD.replace("[1.0e-3]", "[-1.0e-3]"), ["lr.values", "greater than 0"]),
        (GOOD + "ladder: [{name: x, n_layer: 0, d_model: 64, n_head: 4}]\n", ["ladder", "n_layer"]),
        (GOOD + "bogus: 1\n", ["bogus", "unknown field"]),
        (GOOD + "sizes: [t99]\n", ["sizes", "t99"]),
        ("name: t\narchitectures: [transformer]\nlr: {}\n", ["lr", "exactly one"]),
        ("name: [unclosed\n", ["not valid YAML"]),
        (GOOD + "train: {batch_tokens: 100}\n", ["batch_tokens", "multiple of data.seq_len"]),
        (GOOD + "ladder: [{name: x, n_layer: 2, d_model: 66, n_head: 4}]\n", ["ladder[0].n_head", "valid: 1, 2, 3, 6"]),
        (GOOD + "data: {source: hg38, tokenizer: bytes}\n", ["data.tokenizer", "single-nucleotide"]),
        (GOOD + "tracking: {uri: mlflow.db}\n", ["tracking.uri", "an MLflow tracking URI, e.g. http://"]),
        (GOOD + "tracking: {uri: 'postgresql://me:pw@db/mlflow'}\n", ["tracking.uri", "holds a password"]),
        (GOOD + "resources: {gpus: [-1]}\n", ["resources.gpus", "greater than or equal to 0"]),
        (
            GOOD.replace("values", "scale") + "ladder: [{name: x, n_layer: 2, d_model: 64, n_head: 4}]\n",
            ["ladder[0].lr"],
        ),
    ],
)
def test_bad_input_names_the_field(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_sweep(write(tmp_path, text))
    for w in words:
        assert w in str(e.value)
    assert str(tmp_path / "s.yaml") in str(e.value)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_sweep(tmp_path / "nope.yaml")


def test_overrides_are_validated_like_the_file(tmp_path):
    cfg = load_sweep(write(tmp_path, GOOD), parse_overrides(["train.batch_tokens=2048", "seeds=[1, 2]"]))
    assert cfg.train.batch_tokens == 2048 and cfg.seeds == [1, 2]
    with pytest.raises(ConfigError, match="train.zero_stage"):
        load_sweep(write(tmp_path, GOOD), parse_overrides(["train.zero_stage=7"]))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.batch_tokens"])


def test_loading_a_sweep_imports_no_torch():
    code = "import sys; from tasks.config import load_sweep; load_sweep('deployments/sweeps/pile.yaml'); "
    check = "assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code + check], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # The negative control: planning builds model configs, which needs torch.
    plan = "from tasks.plan import plan_sweep; "
    proc = subprocess.run([sys.executable, "-c", plan + code + check], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert "AssertionError: torch imported" in proc.stderr


def many_problems(tmp_path):
    """tiny_sweep with six independent problems: four cross-field, two of single fields."""
    path = tiny_sweep(tmp_path, sizes="[t1, t9]", concurrency=-2)
    text = path.read_text().replace("tokenizer: bpe:320", "tokenizer: char")
    text = text.replace("  batch_tokens: 1024\n", "  batch_tokens: 1024\n  micro_batch_size: 3\n  micro_batch: 4\n")
    path.write_text(text.replace("  starts: 8\n", "  starts: 8\n  reference_arch: mamba\n"))
    return path


def test_every_problem_is_listed_at_once_in_file_order(tmp_path):
    path = many_problems(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: invalid sweep, 6 problems:\n")
    located = re.findall(r"^  line (\d+), ([\w.\[\]]+)[: ]", msg, flags=re.M)
    assert [field for _, field in located] == [
        "data.tokenizer",  # cross-field: 'char' is hg38's tokenizer
        "sizes[1]",  # cross-field: not in the ladder
        "train.micro_batch_size",  # cross-field: does not divide the per-rank batch
        "train.micro_batch",  # unknown field
        "resources.concurrency",  # negative
        "fit.reference_arch",  # cross-field: not one of the architectures
    ]
    file_lines = path.read_text().splitlines()
    for line, field in located:  # each line number points at its field's key
        assert file_lines[int(line) - 1].lstrip().startswith(field.split(".")[-1].split("[")[0] + ":")
    for words in (
        "data.tokenizer: 'char' is the tokenizer of data.source hg38 only",
        "sizes[1]: 't9' is not in the ladder 'tiny'; valid: t1, t2, t3, t4, t5",
        "train.micro_batch_size: 3 must divide the per-rank batch of 32 sequences; valid: 1, 2, 4, 8, 16, 32",
        "train.micro_batch: unknown field; did you mean 'micro_batch_size'?",
        "resources.concurrency: Input should be greater than 0 (got -2)",
        "fit.reference_arch 'mamba' is not one of the sweep's architectures (transformer++)",
    ):
        assert words in msg


def test_a_rule_whose_field_is_invalid_is_skipped(tmp_path):
    # No per-rank batch for the micro-batch to divide: only batch_tokens's own error, labelled by where it came from.
    path = tiny_sweep(tmp_path)
    path.write_text(path.read_text().replace("  batch_tokens: 1024\n", "  batch_tokens: 1024\n  micro_batch_size: 3\n"))
    with pytest.raises(ConfigError) as e:
        load_sweep(path, parse_overrides(["train.batch_tokens=-64"]))
    assert str(e.value).endswith("1 problem:\n  --set train.batch_tokens: Input should be greater than 0 (got -64)")
    with pytest.raises(ConfigError) as e:
        load_sweep(path, parse_overrides(["train.batch_tokens=1000"]))
    assert "train.batch_tokens: 1000 must be a multiple of data.seq_len x resources.ranks_per_run = 32" in str(e.value)
    assert "micro_batch_size" not in str(e.value)


def test_direct_construction_rejects_the_same_inputs():
    raw = {"name": "t", "architectures": ["mamba"], "lr": {"values": [1e-3]}, "sizes": ["t9"]}
    raw["train"] = {"micro_batch_size": 3}
    with pytest.raises(ValidationError, match=r"sizes\[0\]: 't9' is not in the ladder.*micro_batch_size: 3 must"):
        SweepConfig(**raw)
    with pytest.raises(ConfigError, match=r"2 problems:\n  sizes\[0\]: 't9'.*\n  train.micro_batch_size: 3 must"):
        sweep_from_dict(raw)
    with pytest.raises(ValidationError, match="data.fasta: belongs to data.source hg38, not 'pile'"):
        DataConfig(source="pile", fasta="x.fa")
    assert sweep_from_dict({**raw, "sizes": ["t2"], "train": {"micro_batch_size": 2}}).sizes == ["t2"]


def test_the_cli_prints_every_problem_without_a_traceback(tmp_path):
    proc = scaling("plan", many_problems(tmp_path), check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "6 problems:" in proc.stderr and proc.stdout == ""
