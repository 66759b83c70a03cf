import pytest
import torch

from models.ladders import LADDERS
from models.registry import ARCHITECTURES, build_model, model_config
from models.transformer import Transformer, TransformerConfig

SIZE_KEYS = {"name", "n_layer", "d_model", "n_head", "lr"}


@pytest.mark.parametrize("ladder", list(LADDERS))
def test_ladders_are_well_formed(ladder):
    sizes = LADDERS[ladder]
    assert len({s["name"] for s in sizes}) == len(sizes)
    for s in sizes:
        assert set(s) == SIZE_KEYS
        assert s["d_model"] % s["n_head"] == 0
    for arch in ARCHITECTURES:
        counts = [model_config(arch, s, vocab_size=512, seq_len=128).n_params_nonembed() for s in sizes]
        assert counts == sorted(counts), (arch, counts)
    lrs = [s["lr"] for s in sizes]
    assert lrs == sorted(lrs, reverse=True)


def test_tiny_ladder_is_cpu_sized_and_roughly_geometric():
    for arch in ARCHITECTURES:
        counts = [model_config(arch, s, vocab_size=512, seq_len=128).n_params_nonembed() for s in LADDERS["tiny"]]
        assert 20_000 < counts[0] and counts[-1] < 2_000_000
        ratios = [b / a for a, b in zip(counts, counts[1:])]
        assert all(2 < r < 4 for r in ratios), (arch, ratios)


@pytest.mark.parametrize("arch,variant", [("transformer", "transformer"), ("transformer++", "transformer++")])
def test_build_from_ladder(arch, variant):
    config = model_config(arch, LADDERS["tiny"][0], vocab_size=100, seq_len=32)
    assert isinstance(config, TransformerConfig) and config.variant == variant
    assert TransformerConfig(**config.to_dict()) == config
    model = build_model(config)
    assert isinstance(model, Transformer)
    assert model(torch.zeros(2, 32, dtype=torch.long)).shape == (2, 32, config.padded_vocab)


def test_unknown_architecture_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'mamba3'.*transformer, transformer\+\+"):
        model_config("mamba3", LADDERS["tiny"][0], vocab_size=100, seq_len=32)
    with pytest.raises(ValueError, match=r"transformer, transformer\+\+"):
        build_model(object())
    with pytest.raises(ValueError, match="n_head"):
        model_config("transformer", {"n_layer": 2, "d_model": 32}, vocab_size=100, seq_len=32)
