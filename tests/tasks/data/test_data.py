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
from tests.tasks.data import piles

SAMPLE_BYTES = 300_000


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
    good = piles.zst(tmp_path / "00.jsonl.zst", [piles.record(f"document {i} " * 200) for i in range(200)])
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

    piles.zst(tmp_path / "val.jsonl.zst", [piles.record("a"), piles.record("b"), b"{not json\n"])
    with pytest.raises(DataError, match=r"val\.jsonl\.zst, line 3: not a JSON record"):
        list(iter_documents(tmp_path, "val"))

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.jsonl").write_bytes(piles.record("fine") + b'{"meta": {}}\n')
    with pytest.raises(DataError, match=r'a\.jsonl, line 2: the record has no "text"'):
        list(iter_text_documents(texts))
    (texts / "a.jsonl").write_bytes(piles.record("fine"))
    (texts / "b.txt").write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=r"b\.txt, line 2: not UTF-8"):
        list(iter_text_documents(texts))


def test_pile_shards_in_train_subfolder_read_in_numeric_order(tmp_path):
    (tmp_path / "train").mkdir()
    for i in (10, 2, 0):
        piles.zst(tmp_path / "train" / f"{i:02d}.jsonl.zst", [piles.record(f"shard {i}")])
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
    piles.zst(
        shard,
        [piles.record("a new first document")] + [piles.record(t) for t in iter_documents(pile_copy, "train")][:5],
    )
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
    piles.zst(corpus / "00.jsonl.zst", [piles.record("fine"), b"broken\n"])
    with pytest.raises(DataError, match=r"00\.jsonl\.zst, line 2"):
        prepare_data(DataConfig(source="pile", path=str(corpus), tokenizer="bytes"), tmp_path / "data")
    assert not any(p.name.startswith(("tokens-", ".tokens-")) for p in (tmp_path / "data").iterdir())


def test_text_folder_holds_out_the_tail(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    docs = [f"document number {i}: " + "lorem ipsum " * (20 + i % 7) for i in range(60)]
    for i, d in enumerate(docs[:20]):
        (folder / f"a{i:02d}.txt").write_text(d)
    (folder / "sub" / "b.jsonl").write_bytes(b"".join(piles.record(d) for d in docs[20:40]))
    piles.zst(folder / "sub" / "c.jsonl.zst", [piles.record(d) for d in docs[40:]])
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
    assert json.loads((cache.dir / "manifest.json").read_text())["tokens"]["train"] == first.n_train
