import numpy as np
import pytest

from tasks.data.encode import write_tokens
from tasks.data.tokenizer import END_OF_TEXT, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("bytes", lambda: [], None)


def _docs(n: int):
    return [(f"document {i}: " + "word " * (i % 17) + "é", "odd" if i % 2 else "even") for i in range(n)]


def test_workers_write_the_same_file_in_reading_order(tok, tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.data.encode.BATCH_DOCS", 7)  # many batches in flight at once
    eot = tok.token_to_id(END_OF_TEXT)
    one = write_tokens(tok, _docs(200), tmp_path / "one.bin", "uint16", eot, workers=1)
    two = write_tokens(tok, _docs(200), tmp_path / "two.bin", "uint16", eot, workers=2)
    assert (tmp_path / "one.bin").read_bytes() == (tmp_path / "two.bin").read_bytes()
    assert one == two and one.documents == 200
    ids = np.fromfile(tmp_path / "one.bin", dtype=np.uint16)
    assert one.tokens == len(ids) and np.count_nonzero(ids == eot) == 200
    first = ids[: np.argmax(ids == eot)]
    assert tok.decode(first.tolist()) == _docs(1)[0][0]
    assert one.set_documents == {"even": 100, "odd": 100}
    assert sum(one.set_tokens.values()) == one.tokens


def test_limit_cuts_the_last_document_and_counts_it(tok, tmp_path):
    eot = tok.token_to_id(END_OF_TEXT)
    full = write_tokens(tok, _docs(10), tmp_path / "full.bin", "uint16", eot, workers=1)
    cut = write_tokens(tok, _docs(10), tmp_path / "cut.bin", "uint16", eot, workers=2, limit=full.tokens // 2)
    assert cut.tokens == full.tokens // 2 == (tmp_path / "cut.bin").stat().st_size // 2
    assert (tmp_path / "full.bin").read_bytes().startswith((tmp_path / "cut.bin").read_bytes())
    ids = np.fromfile(tmp_path / "full.bin", dtype=np.uint16)
    starts = np.flatnonzero(ids == eot) + 1
    assert cut.documents == 1 + np.count_nonzero(starts < cut.tokens)
    assert sum(cut.set_tokens.values()) == cut.tokens
