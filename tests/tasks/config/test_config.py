import subprocess
import sys

import pytest

from tasks.config import PROJECT_ROOT, ConfigError, load_sweep, parse_overrides

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
    for name in ("sample", "pile"):
        cfg = load_sweep(f"deployments/sweeps/{name}.yaml")
        assert cfg.name == name


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
