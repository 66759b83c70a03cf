import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kernels.fftconv import ENV_VAR
from models.hyena import Hyena, HyenaConfig
from models.ladders import LADDERS
from models.registry import build_model, config_from_dict, model_config
from tests.models.memorise import memorise


def tiny(**overrides):
    fields = dict(vocab_size=61, n_layer=2, d_model=32, seq_len=16) | overrides
    return HyenaConfig(**fields)


@pytest.mark.parametrize("impl", ["rfft", "ref"])
def test_causal(impl, monkeypatch):
    monkeypatch.setenv(ENV_VAR, impl)
    torch.manual_seed(0)
    model = Hyena(tiny()).eval()
    tokens = torch.randint(0, 61, (2, 16))
    t = 6
    changed = tokens.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % 61
    with torch.no_grad():
        before, after, prefix = model(tokens), model(changed), model(tokens[:, : t + 1])
    # The FFT path is causal up to fp32 rounding, which moves past logits by ~1e-7 here; dropping
    # the padding to 2T (a circular convolution) would move them by ~2e-3, far outside tolerance.
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1])
    assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])
    # A shorter sequence sees the first taps of the same filters, so its logits are the prefix's.
    torch.testing.assert_close(prefix, before[:, : t + 1])


@pytest.mark.parametrize(
    "shape",
    [
        dict(vocab_size=61, n_layer=2, d_model=32),  # vocab padded 61 -> 64
        dict(vocab_size=64, n_layer=1, d_model=48, order=3, filter_order=16),
        dict(vocab_size=100, n_layer=1, d_model=24, short_filter=4, mlp_ratio=4),
    ],
)
def test_n_params_counts_module_parameters(shape):
    config = HyenaConfig(seq_len=16, **shape)
    model = Hyena(config)
    assert model.lm_head.weight is model.embed.weight
    assert config.n_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("n_layer,d_model", [(3, 32), (5, 48), (18, 768), (36, 2048)])
def test_n_params_nonembed_closed_form(n_layer, d_model):
    L, D = n_layer, d_model
    config = HyenaConfig(vocab_size=1000, n_layer=L, d_model=D, seq_len=64)
    # Per layer: 3D^2 + D^2 projections and 4D^2 MLP weights; 7D biases; short conv 3D x (3 taps
    # + bias); filter FFN 33x64 + 2 x 64x64 + 64xD weights, 3 x 64 biases, 64 sine frequencies;
    # the skip D; two LayerNorms 4D. Final LayerNorm 2D.
    per_layer = 8 * D * D + 7 * D + 12 * D + (33 * 64 + 2 * 64 * 64 + 64 * D) + 3 * 64 + 64 + D + 4 * D
    assert config.n_params_nonembed() == L * per_layer + 2 * D
    # Plus the tied embedding and each layer's (seq_len x 33) positional table.
    assert config.n_params() == L * per_layer + 2 * D + 1000 * D + L * 64 * 33


# Mamba paper Table 12 with the GPT-2 vocabulary at 2048 tokens: Hyena layers, Hyena and GPT-3
# Transformer parameters (M). Hyena lands 0.3-0.8% above: its filters outweigh the Transformer's
# learned positions.
PAPER_COUNTS = {
    "125m": (18, 126.2, 125.2),
    "350m": (36, 359.5, 355.9),
    "760m": (36, 764.4, 760.3),
    "1.3b": (36, 1320.2, 1315.7),
}


@pytest.mark.parametrize("size", LADDERS["paper"], ids=lambda s: s["name"])
def test_paper_ladder_matches_the_transformer(size):
    hyena = model_config("hyena", size, vocab_size=50257, seq_len=2048)
    transformer = model_config("transformer", size, vocab_size=50257, seq_len=2048)
    n_layer, hyena_m, transformer_m = PAPER_COUNTS[size["name"]]
    assert hyena.n_layer == n_layer
    assert hyena.n_params() / 1e6 == pytest.approx(hyena_m, abs=0.05)
    assert transformer.n_params() / 1e6 == pytest.approx(transformer_m, abs=0.05)
    assert hyena.n_params() == pytest.approx(transformer.n_params(), rel=0.1)


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
):
    # Each gradient of a conv costs what its forward did: 2 x outputs x weights, per sample.
    assert not transposed
    forward = 2 * grad_out_shape[0] * math.prod(grad_out_shape[2:]) * math.prod(w_shape)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def test_flops_per_token_matches_flop_counter(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    torch.manual_seed(0)
    config = tiny()
    model = Hyena(config)
    B, T = 2, 16
    tokens = torch.randint(0, config.vocab_size, (B, T))
    # torch 2.13's formula for a conv's weight gradient ignores `groups`, counting a depthwise
    # conv's C times over; this one counts it as the forward, as it counts the input gradient.
    with FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops}
    ) as counter:
        logits = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    L, C = config.n_layer, config.d_filter
    # What the counter cannot see, in the convention's own terms: the FFTs (no formula for
    # aten._fft_r2c / _fft_c2r) and the complex product, 3 x (15 log2(2T) + 8) per channel and
    # token; and the filter FFN, which ran once for the batch but is counted once per sequence.
    unseen_fft = 3 * L * C * (15 * math.log2(2 * T) + 8) * B * T
    filter_ffn = 33 * 64 + 2 * 64 * 64 + 64 * C
    ffn_per_sequence = 3 * L * 2 * filter_ffn * (B - 1) * T
    expected = config.flops_per_token(T) * B * T - unseen_fft - ffn_per_sequence
    # Exact but for flops_per_token's rounding to an integer (at most 1/2 a FLOP per token).
    assert counter.get_total_flops() == pytest.approx(expected, abs=B * T / 2)


def test_builds_from_the_tiny_ladder():
    # Ladder layers 2, 3, 4, 5, 8 -> round(1.5 x): 3, 4 (4.5 rounds to even), 6, 8 (7.5), 12.
    configs = [model_config("hyena", size, vocab_size=100, seq_len=32) for size in LADDERS["tiny"]]
    assert [c.n_layer for c in configs] == [3, 4, 6, 8, 12]
    assert config_from_dict("hyena", configs[0].to_dict()) == configs[0]
    model = build_model(configs[0])
    assert isinstance(model, Hyena)
    assert model(torch.zeros(2, 32, dtype=torch.long)).shape == (2, 32, configs[0].padded_vocab)


def test_overfits_one_batch():
    torch.manual_seed(0)
    config = tiny(vocab_size=64, seq_len=32)
    model = Hyena(config)
    # Two sequences and 30 steps already end near a loss of 0.1-0.2, in a few seconds on a quiet CPU.
    losses = memorise(model, vocab=64, n_seq=2, steps=30)
    # Random tokens: the only way below ln(64) ~ 4.16 is to memorise the batch.
    assert losses[0] == pytest.approx(math.log(64), abs=0.3)
    assert losses[-1] < 0.5, losses[::10]


def test_init_is_gpt2_style():
    torch.manual_seed(0)
    config = tiny(n_layer=8, d_model=128)
    model = Hyena(config)
    block = model.blocks[0]
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.hyena.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.hyena.filter.ffn[6].weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * 8)
    assert block.hyena.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.mlp.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.all(block.hyena.in_proj.bias == 0)
    assert torch.all(block.hyena.filter.ffn[1].freq == 14)
    assert torch.all(model.norm_f.weight == 1)


def test_init_weights_fills_a_meta_model():
    config = tiny()
    with torch.device("meta"):
        model = Hyena(config)
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.lm_head.weight is model.embed.weight
    assert config.n_params() == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(
        model.blocks[1].hyena.filter.pos_features, Hyena(config).blocks[1].hyena.filter.pos_features
    )
    assert model(torch.zeros(1, 16, dtype=torch.long)).isfinite().all()


def test_no_weight_decay_names_the_filters():
    model = Hyena(tiny(n_layer=1))
    filter_params = {
        "ffn.0.weight",
        "ffn.0.bias",
        "ffn.1.freq",
        "ffn.2.weight",
        "ffn.2.bias",
        "ffn.4.weight",
        "ffn.4.bias",
        "ffn.6.weight",
        "pos_features",
        "D",
    }
    assert model.no_weight_decay() == {f"blocks.0.hyena.filter.{name}" for name in filter_params}
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()


def test_rejects_bad_configs_and_long_inputs():
    with pytest.raises(ValueError, match="order must be at least 2"):
        tiny(order=1)
    with pytest.raises(ValueError, match="d_model must be positive"):
        tiny(d_model=0)
    model = Hyena(tiny())
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
