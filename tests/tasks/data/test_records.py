"""Which records reach the token cache: bad ones stopped or counted by cause (tasks.data.corpus), and the
sets kept and weighted by data.subsets and data.mixture (tasks.data.mixture)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DataConfig
from tasks.data import DataError, prepare_data
from tests.tasks.data import piles


def _mixed_pile(root: Path) -> Path:
    """Two sets, 40 documents each, over two train shards, and a val shard with both."""
    root.mkdir()
    for shard in range(2):
        lines = [
            piles.record(f"{name} document {shard}-{i} " * 8, name) for i in range(20) for name in ("Alpha", "Beta")
        ]
        piles.zst(root / f"{shard:02d}.jsonl.zst", lines)
    piles.zst(
        root / "val.jsonl.zst",
        [piles.record(f"{name} held out {i} " * 8, name) for i in range(30) for name in ("Alpha", "Beta")],
    )
    return root


def _manifest(cache) -> dict:
    return json.loads((cache.dir / "manifest.json").read_text())


def _bad_pile(root: Path) -> Path:
    """A Pile folder with one bad record of every kind, a truncated shard and an empty one."""
    root.mkdir()
    good = [piles.record(f"good document {i} " * 20) for i in range(40)]
    piles.zst(
        root / "00.jsonl.zst",
        [*good[:10], b"{not json\n", b'{"meta": {}}\n', b'{"text": "bad \xff byte"}\n', *good[10:20]],
    )
    # Big enough for several zstd blocks, so that the records before the cut can be read.
    whole = piles.zst(
        root / "01.jsonl.zst", [piles.record(f"record {i} of a long shard " * 20) for i in range(2000)]
    ).read_bytes()
    (root / "01.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    (root / "02.jsonl.zst").write_bytes(b"")
    piles.zst(root / "val.jsonl.zst", good)
    return root


def test_bad_records_stop_the_build_by_default_naming_file_and_line(tmp_path):
    corpus = _bad_pile(tmp_path / "pile")
    cfg = DataConfig(source="pile", path=str(corpus), tokenizer="bytes", val_tokens=256, seq_len=16)
    with pytest.raises(DataError, match=r"00\.jsonl\.zst, line 11: not a JSON record"):
        prepare_data(cfg, tmp_path / "data")
    assert not any(p.name.startswith(("tokens-", ".tokens-")) for p in (tmp_path / "data").iterdir())


def test_bad_records_are_skipped_and_counted_by_cause(tmp_path):
    corpus = _bad_pile(tmp_path / "pile")
    cfg = DataConfig(
        source="pile", path=str(corpus), tokenizer="bytes", val_tokens=256, seq_len=16, on_bad_record="skip"
    )
    cache = prepare_data(cfg, tmp_path / "data")
    skipped = _manifest(cache)["skipped"]
    assert skipped["policy"] == "skip"
    assert skipped["counts"] == {"corrupt_file": 1, "empty_file": 1, "invalid_utf8": 1, "no_text": 1, "not_json": 1}
    assert skipped["examples"]["invalid_utf8"] == [
        f"{corpus / '00.jsonl.zst'}, line 13: not UTF-8 text (invalid start byte at byte 14)"
    ]
    assert "01.jsonl.zst: corrupt or truncated zstd data after line" in skipped["examples"]["corrupt_file"][0]
    # The 20 good records of shard 00 and those of the truncated 01 that precede the damage.
    documents = _manifest(cache)["documents"]["train"]
    assert 20 < documents < 20 + 2000
    assert np.count_nonzero(cache.train_tokens() == cache.eot_id) == documents
    # A sweep that wants errors does not get the skipping cache.
    with pytest.raises(DataError, match="line 11: not a JSON record"):
        prepare_data(cfg.model_copy(update={"on_bad_record": "error"}), tmp_path / "data")


def test_subsets_keep_only_the_named_sets(tmp_path):
    corpus = _mixed_pile(tmp_path / "pile")
    cfg = DataConfig(source="pile", path=str(corpus), tokenizer="bytes", val_tokens=512, seq_len=16, subsets=["Beta"])
    manifest = _manifest(prepare_data(cfg, tmp_path / "data"))
    assert set(manifest["sets"]["train"]) == {"Beta"} and manifest["sets"]["train"]["Beta"]["documents"] == 40
    assert set(manifest["sets"]["val"]) == {"Beta"}
    assert manifest["selection"]["subsets"] == ["Beta"]

    typo = cfg.model_copy(update={"subsets": ["Beta", "Gamma"]})
    with pytest.raises(DataError, match=r"data\.subsets: no document of Gamma in .* \(sets there: Beta\)"):
        prepare_data(typo, tmp_path / "data")


def test_mixture_weights_repeat_or_thin_a_set_in_train_only(tmp_path):
    corpus = _mixed_pile(tmp_path / "pile")
    base = DataConfig(source="pile", path=str(corpus), tokenizer="bytes", val_tokens=512, seq_len=16)
    plain = _manifest(prepare_data(base, tmp_path / "data"))["sets"]
    mixed = prepare_data(base.model_copy(update={"mixture": {"Alpha": 2.0, "Beta": 0.5}}), tmp_path / "data")
    sets = _manifest(mixed)["sets"]
    assert sets["train"]["Alpha"]["documents"] == 2 * plain["train"]["Alpha"]["documents"] == 80
    assert sets["train"]["Alpha"]["tokens"] == 2 * plain["train"]["Alpha"]["tokens"]
    assert 10 <= sets["train"]["Beta"]["documents"] <= 30  # a seeded half of 40
    assert sets["val"] == plain["val"]  # validation is never reweighted
    again = prepare_data(base.model_copy(update={"mixture": {"Alpha": 2.0, "Beta": 0.5}}), tmp_path / "again")
    assert np.array_equal(again.train_tokens(), mixed.train_tokens())  # the same documents on every build
