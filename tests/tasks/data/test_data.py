import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import zstandard
from tokenizers import Tokenizer, models, pre_tokenizers

from tasks.config import DataConfig
from tasks.data import DataError, TokenCache, check_data, prepare_data, vocab_size_for
from tasks.data.corpus import iter_documents, iter_text_documents
from tasks.data.sample_corpus import SAMPLE_MARKER, SAMPLE_SET_NAME, build_sample_corpus
from tasks.data.tokenizer import load_tokenizer

SAMPLE_BYTES = 300_000


def _zst(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(b"".join(lines)))
    return path


def _record(text: str) -> bytes:
    return json.dumps({"text": text, "meta": {"pile_set_name": "test"}}).encode() + b"\n"


def _sample_cfg(sample: Path) -> dict:
    return {"source": "sample", "path": str(sample), "sample_bytes": SAMPLE_BYTES}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return build_sample_corpus(tmp_path_factory.mktemp("corpus") / "sample", SAMPLE_BYTES)


@pytest.fixture(scope="module")
def pile_copy(sample, tmp_path_factory) -> Path:
    """The sample corpus as a user's Pile folder (source 'pile'), for tests that change its files."""
    return Path(shutil.copytree(sample, tmp_path_factory.mktemp("pile") / "pile"))


@pytest.fixture(scope="module")
def bytes_cache(sample, tmp_path_factory):
    cfg = DataConfig(**_sample_cfg(sample), tokenizer="bytes", val_tokens=4096)
    return prepare_data(cfg, tmp_path_factory.mktemp("data"))


# ---------------------------------------------------------------- sample corpus and reader


def test_sample_corpus_is_deterministic_pile_format(sample, tmp_path):
    again = build_sample_corpus(tmp_path / "again", SAMPLE_BYTES)
    shards = sorted(p.name for p in sample.glob("*.jsonl.zst"))
    assert "00.jsonl.zst" in shards and "val.jsonl.zst" in shards and len(shards) >= 3
    for name in shards:
        assert (sample / name).read_bytes() == (again / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"

    lines = zstandard.ZstdDecompressor().decompress((sample / "00.jsonl.zst").read_bytes()).splitlines()
    for line in lines:
        record = json.loads(line)
        assert record["meta"]["pile_set_name"] == SAMPLE_SET_NAME and record["text"].strip()

    marker = json.loads((sample / SAMPLE_MARKER).read_text())
    train, val = list(iter_documents(sample, "train")), list(iter_documents(sample, "val"))
    assert (len(train), len(val)) == (marker["documents"]["train"], marker["documents"]["val"])
    assert len(val) >= 1 and sum(map(len, val)) < sum(map(len, train)) / 5
    assert 0.9 * SAMPLE_BYTES < marker["bytes"]["train"] + marker["bytes"]["val"] <= SAMPLE_BYTES


def test_sample_corpus_is_reused_and_refuses_foreign_folders(sample, tmp_path):
    stamp = (sample / "00.jsonl.zst").stat().st_mtime_ns
    assert build_sample_corpus(sample, SAMPLE_BYTES) == sample
    assert (sample / "00.jsonl.zst").stat().st_mtime_ns == stamp

    smaller = build_sample_corpus(tmp_path / "resized", SAMPLE_BYTES)
    assert build_sample_corpus(smaller, SAMPLE_BYTES // 2) == smaller
    assert json.loads((smaller / SAMPLE_MARKER).read_text())["max_bytes"] == SAMPLE_BYTES // 2
    assert [p.name for p in tmp_path.iterdir()] == ["resized"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a sample corpus"):
        build_sample_corpus(foreign, SAMPLE_BYTES)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_reader_errors_name_file_and_line(tmp_path):
    good = _zst(tmp_path / "00.jsonl.zst", [_record(f"document {i} " * 200) for i in range(200)])
    truncated = tmp_path / "trunc" / "00.jsonl.zst"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"trunc/00\.jsonl\.zst: corrupt or truncated zstd data after line \d+"):
        list(iter_documents(truncated.parent, "train"))

    flipped = tmp_path / "flip" / "00.jsonl.zst"
    flipped.parent.mkdir()
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"flip/00\.jsonl\.zst: corrupt"):
        list(iter_documents(flipped.parent, "train"))

    _zst(tmp_path / "val.jsonl.zst", [_record("a"), _record("b"), b"{not json\n"])
    with pytest.raises(DataError, match=r"val\.jsonl\.zst, line 3: not a JSON record"):
        list(iter_documents(tmp_path, "val"))

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.jsonl").write_bytes(_record("fine") + b'{"meta": {}}\n')
    with pytest.raises(DataError, match=r'a\.jsonl, line 2: the record has no "text"'):
        list(iter_text_documents(texts))
    (texts / "a.jsonl").write_bytes(_record("fine"))
    (texts / "b.txt").write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=r"b\.txt, line 2: not UTF-8"):
        list(iter_text_documents(texts))


def test_pile_shards_in_train_subfolder_read_in_numeric_order(tmp_path):
    (tmp_path / "train").mkdir()
    for i in (10, 2, 0):
        _zst(tmp_path / "train" / f"{i:02d}.jsonl.zst", [_record(f"shard {i}")])
    assert list(iter_documents(tmp_path, "train")) == ["shard 0", "shard 2", "shard 10"]


# ---------------------------------------------------------------- the token cache


def test_bytes_cache_layout_and_end_of_document_tokens(bytes_cache, sample):
    manifest = json.loads((bytes_cache.dir / "manifest.json").read_text())
    assert bytes_cache.dtype == manifest["dtype"] == "uint16" and bytes_cache.vocab_size == 257
    assert vocab_size_for(DataConfig(tokenizer="bytes")) == 257
    for split in ("train", "val"):
        size = (bytes_cache.dir / f"{split}.bin").stat().st_size
        assert manifest["tokens"][split] == size // np.dtype(np.uint16).itemsize
    assert bytes_cache.n_val == 4096 and manifest["val_split"] == "val.jsonl.zst"

    train = bytes_cache.train_tokens()
    assert not train.flags.writeable
    docs = list(iter_documents(sample, "train"))
    ends = np.flatnonzero(train == bytes_cache.eot_id)
    assert len(ends) == len(docs) == manifest["documents"]["train"] and ends[-1] == len(train) - 1
    assert bytes(train[: ends[0]].astype(np.uint8)) == docs[0].encode()
    assert bytes(train[ends[0] + 1 : ends[1]].astype(np.uint8)) == docs[1].encode()
    tok = Tokenizer.from_file(str(bytes_cache.tokenizer_path))
    assert tok.decode(train[: ends[0]].tolist()) == docs[0]


def test_bpe_cache_is_reused_and_keyed_by_content(sample, pile_copy, tmp_path):
    cfg = DataConfig(source="pile", path=str(pile_copy), tokenizer="bpe:300", val_tokens=2048, seq_len=32)
    first = prepare_data(cfg, tmp_path)
    assert first.vocab_size == 300 and first.dtype == "uint16"
    stamps = {p.name: p.stat().st_mtime_ns for p in first.dir.iterdir()}
    again = prepare_data(cfg, tmp_path)
    assert again == first and {p.name: p.stat().st_mtime_ns for p in first.dir.iterdir()} == stamps
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"

    assert prepare_data(cfg.model_copy(update={"tokenizer": "bpe:320"}), tmp_path).key != first.key
    assert prepare_data(cfg.model_copy(update={"val_tokens": 1024}), tmp_path).key != first.key
    assert prepare_data(cfg.model_copy(update={"seq_len": 64}), tmp_path).key == first.key

    shard = pile_copy / "00.jsonl.zst"
    original = shard.read_bytes()
    _zst(shard, [_record("a new first document")] + [_record(t) for t in iter_documents(pile_copy, "train")][:5])
    try:
        changed = prepare_data(cfg, tmp_path)
    finally:
        shard.write_bytes(original)
    assert changed.key != first.key and changed.dir != first.dir
    assert TokenCache.open(first.dir) == first and vocab_size_for(cfg) == 300


def test_cache_without_manifest_is_rebuilt(pile_copy, tmp_path):
    cfg = DataConfig(source="pile", path=str(pile_copy), tokenizer="bytes", val_tokens=1024, seq_len=32)
    cache = prepare_data(cfg, tmp_path)
    inode = (cache.dir / "train.bin").stat().st_ino
    (cache.dir / "manifest.json").unlink()
    with pytest.raises(DataError, match="not a finished token cache"):
        TokenCache.open(cache.dir)
    rebuilt = prepare_data(cfg, tmp_path)
    assert rebuilt == cache and (cache.dir / "manifest.json").is_file()
    assert (cache.dir / "train.bin").stat().st_ino != inode


def test_failed_build_leaves_no_cache(tmp_path):
    corpus = tmp_path / "pile"
    corpus.mkdir()
    _zst(corpus / "00.jsonl.zst", [_record("fine"), b"broken\n"])
    with pytest.raises(DataError, match=r"00\.jsonl\.zst, line 2"):
        prepare_data(DataConfig(source="pile", path=str(corpus), tokenizer="bytes"), tmp_path / "data")
    assert not any(p.name.startswith(("tokens-", ".tokens-")) for p in (tmp_path / "data").iterdir())


def test_text_folder_holds_out_the_tail(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    docs = [f"document number {i}: " + "lorem ipsum " * (20 + i % 7) for i in range(60)]
    for i, d in enumerate(docs[:20]):
        (folder / f"a{i:02d}.txt").write_text(d)
    (folder / "sub" / "b.jsonl").write_bytes(b"".join(_record(d) for d in docs[20:40]))
    _zst(folder / "sub" / "c.jsonl.zst", [_record(d) for d in docs[40:]])
    assert list(iter_text_documents(folder)) == docs

    cfg = DataConfig(source="text", path=str(folder), tokenizer="bytes", val_tokens=1000, seq_len=16)
    cache = prepare_data(cfg, tmp_path / "data")
    train, val = cache.train_tokens(), cache.val_tokens()
    stream = np.concatenate([np.frombuffer((d.encode() + b"\0"), np.uint8).astype(np.int64) for d in docs])
    stream[stream == 0] = cache.eot_id
    assert cache.n_val == 1000 and train[-1] == cache.eot_id
    assert np.array_equal(train, stream[: len(train)])
    assert np.array_equal(val, stream[len(train) : len(train) + 1000])
    manifest = json.loads((cache.dir / "manifest.json").read_text())
    assert manifest["documents"]["train"] == int(np.count_nonzero(train == cache.eot_id))


def test_user_tokenizer_file_and_uint32(tmp_path, bytes_cache, sample):
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    cfg = DataConfig(**_sample_cfg(sample), tokenizer=str(path), val_tokens=256)
    cache = prepare_data(cfg, tmp_path / "data")
    assert cache.dtype == "uint32" and cache.vocab_size == vocab_size_for(cfg) == 70_002 and cache.eot_id == 1

    path.write_text("{not json")
    with pytest.raises(DataError, match=re.escape(f"{path}: not a readable tokenizer.json")):
        load_tokenizer(str(path), lambda: iter_documents(sample, "train"), tmp_path)

    del vocab["<|endoftext|>"]
    Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(path))
    with pytest.raises(DataError, match=re.escape(f"{path}: no end-of-text token")):
        load_tokenizer(str(path), lambda: iter_documents(sample, "train"), tmp_path)


def test_missing_inputs_name_the_path(tmp_path):
    missing = tmp_path / "no-such-pile"
    for check in (check_data, lambda cfg: prepare_data(cfg, tmp_path / "data")):
        with pytest.raises(DataError, match=rf"{missing}.*--set data\.path="):
            check(DataConfig(source="pile", path=str(missing)))
    with pytest.raises(DataError, match="needs a corpus folder"):
        check_data(DataConfig(source="pile"))
    with pytest.raises(DataError, match=rf"{tmp_path}: no Pile train shards"):
        check_data(DataConfig(source="pile", path=str(tmp_path)))
    with pytest.raises(DataError, match=rf"{tmp_path}: no \.txt"):
        check_data(DataConfig(source="text", path=str(tmp_path)))

    tok = tmp_path / "gpt2" / "tokenizer.json"
    for check in (check_data, lambda cfg: prepare_data(cfg, tmp_path / "data")):
        with pytest.raises(DataError, match=re.escape(f"tokenizer file not found: {tok}")):
            check(DataConfig(tokenizer=str(tok)))
    with pytest.raises(DataError, match="at least 257"):
        check_data(DataConfig(tokenizer="bpe:100"))
    check_data(DataConfig())


def test_too_short_validation_split_is_named(sample, tmp_path):
    cfg = DataConfig(**_sample_cfg(sample), tokenizer="bytes", val_tokens=100)
    with pytest.raises(DataError, match="validation split has 100 tokens, fewer than data.seq_len \\+ 1 = 129"):
        prepare_data(cfg, tmp_path)


# ---------------------------------------------------------------- bad records, subsets, mixtures


def _set_record(text: str, set_name: str) -> bytes:
    return json.dumps({"text": text, "meta": {"pile_set_name": set_name}}).encode() + b"\n"


def _mixed_pile(root: Path) -> Path:
    """Two sets, 40 documents each, over two train shards, and a val shard with both."""
    root.mkdir()
    for shard in range(2):
        lines = [
            _set_record(f"{name} document {shard}-{i} " * 8, name) for i in range(20) for name in ("Alpha", "Beta")
        ]
        _zst(root / f"{shard:02d}.jsonl.zst", lines)
    _zst(
        root / "val.jsonl.zst",
        [_set_record(f"{name} held out {i} " * 8, name) for i in range(30) for name in ("Alpha", "Beta")],
    )
    return root


def _manifest(cache) -> dict:
    return json.loads((cache.dir / "manifest.json").read_text())


def _bad_pile(root: Path) -> Path:
    """A Pile folder with one bad record of every kind, a truncated shard and an empty one."""
    root.mkdir()
    good = [_record(f"good document {i} " * 20) for i in range(40)]
    _zst(
        root / "00.jsonl.zst",
        [*good[:10], b"{not json\n", b'{"meta": {}}\n', b'{"text": "bad \xff byte"}\n', *good[10:20]],
    )
    # Big enough for several zstd blocks, so that the records before the cut can be read.
    whole = _zst(
        root / "01.jsonl.zst", [_record(f"record {i} of a long shard " * 20) for i in range(2000)]
    ).read_bytes()
    (root / "01.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    (root / "02.jsonl.zst").write_bytes(b"")
    _zst(root / "val.jsonl.zst", good)
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


def test_a_killed_build_leaves_nothing_that_is_used_and_is_cleared(pile_copy, tmp_path):
    cfg = DataConfig(source="pile", path=str(pile_copy), tokenizer="bytes", val_tokens=1024, seq_len=32)
    first = prepare_data(cfg, tmp_path)
    shutil.rmtree(first.dir)
    # What a build killed halfway leaves: a temp folder with partial tokens and no manifest,
    # whose builder process is gone.
    stale = tmp_path / f".{first.dir.name}-{socket.gethostname()}-999999999-x1y2"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 100)
    cache = prepare_data(cfg, tmp_path)
    assert cache == first and not stale.exists()
    assert _manifest(cache)["tokens"]["train"] == first.n_train
