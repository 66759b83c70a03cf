"""Tokenizers: bytes, a byte-level BPE trained on the corpus, or a user's HF tokenizer.json.

Every one ends documents with an end-of-text token, found by name in a user's file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tasks.atomic import write_atomic
from tasks.data.corpus import DataError

END_OF_TEXT = "<|endoftext|>"
# GPT-2/NeoX use the first; Llama-style tokenizer.json files carry one of the others.
_END_TOKENS = (END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>")
# BPE merges settle long before this; it bounds tokenizer training on a full Pile.
_BPE_TRAIN_CHARS = 128 << 20


def _byte_chars() -> list[str]:
    """GPT-2's stand-in character for each byte, in byte order (the characters ByteLevel pre-tokenizing emits):
    printable Latin-1 bytes stand for themselves, the others for 256, 257, ... in turn."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def _byte_level(model: models.Model) -> Tokenizer:
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _byte_tokenizer() -> Tokenizer:
    # A BPE with no merges over the 256 byte characters: token b is byte b, the end of text is 256.
    tok = _byte_level(models.BPE(vocab={c: b for b, c in enumerate(_byte_chars())}, merges=[]))
    tok.add_special_tokens([END_OF_TEXT])
    return tok


def _train_bpe(docs: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_first_chars(docs, _BPE_TRAIN_CHARS), trainer=trainer)
    return tok


def _first_chars(docs: Iterable[str], limit: int) -> Iterator[str]:
    seen = 0
    for d in docs:
        if seen >= limit:
            return
        seen += len(d)
        yield d


def parse_spec(spec: str) -> tuple[Literal["bytes", "bpe", "file"], int, Path | None]:
    if spec == "bytes":
        return "bytes", 0, None
    if spec.startswith("bpe:"):
        vocab = int(spec[4:]) if spec[4:].isdigit() else 0
        if vocab < 257:
            raise DataError(
                f"data.tokenizer {spec!r}: the BPE vocabulary must be an integer of at least 257 "
                f"(256 bytes and {END_OF_TEXT}), e.g. 'bpe:512'"
            )
        return "bpe", vocab, None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(
            f"tokenizer file not found: {path.absolute()} "
            "(data.tokenizer is 'bytes', 'bpe:<vocab>' or the path of a tokenizer.json)"
        )
    return "file", 0, path


def end_token_id(tok: Tokenizer, where: str | Path = "tokenizer") -> int:
    """The id of the token that ends a document; DataError naming `where` if the tokenizer has none."""
    for t in _END_TOKENS:
        if (i := tok.token_to_id(t)) is not None:
            return i
    looked = ", ".join(_END_TOKENS)
    raise DataError(f"{where}: no end-of-text token (looked for {looked}); add {END_OF_TEXT!r} to it")


def user_tokenizer(path: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception on a malformed file
        raise DataError(f"{path.absolute()}: not a readable tokenizer.json ({e})") from None
    end_token_id(tok, path.absolute())
    return tok


def load_tokenizer(spec: str, train_docs: Callable[[], Iterable[str]], cache_dir: Path) -> Tokenizer:
    """'bytes', 'bpe:<vocab>' or the path of a tokenizer.json, as a HF tokenizer with an end-of-text token.

    'bpe:<vocab>' is trained on the first 128 M characters of `train_docs()` (of a text folder: all its
    documents, the held-out tail included) and saved as cache_dir/bpe-<vocab>.tokenizer.json, which later
    calls load; cache_dir must therefore belong to one selection of one corpus.
    """
    kind, vocab, path = parse_spec(spec)
    if kind == "bytes":
        return _byte_tokenizer()
    if kind == "file":
        return user_tokenizer(path)
    saved = Path(cache_dir) / f"bpe-{vocab}.tokenizer.json"
    if saved.is_file():
        return Tokenizer.from_file(str(saved))
    tok = _train_bpe(train_docs(), vocab)
    saved.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, tok.to_str().encode())
    return tok
