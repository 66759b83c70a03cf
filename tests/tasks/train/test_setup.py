import pytest

from tasks.train.setup import lr_lambda, param_groups


class Spec:
    lr, steps, warmup_steps = 1e-2, 100, 10
    schedule = {"kind": "cosine", "min_lr": 1e-5, "decay_fraction": 0.2}


def test_warmup_then_cosine_to_the_floor():
    f = lr_lambda(Spec)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 * (1 + 1e-3), rel=1e-3)
    assert f(100) == pytest.approx(1e-5 / 1e-2)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_wsd_holds_then_decays_linearly():
    class W(Spec):
        schedule = {"kind": "wsd", "min_lr": 0.0, "decay_fraction": 0.2}

    f = lr_lambda(W)
    assert f(50) == 1.0 and f(79) == 1.0
    assert f(90) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_no_decay_on_norms_biases_and_embeddings():
    from models.ladders import LADDERS
    from models.registry import build_model, model_config

    model = build_model(model_config("transformer", LADDERS["tiny"][0], vocab_size=64, seq_len=16))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("embed" in names[id(p)] for p in no_decay["params"])
    assert any(names[id(p)].endswith("bias") for p in no_decay["params"])
