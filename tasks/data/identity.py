"""What a run's data is, by content and never by path: the same corpus at another path is the same data,
and a corpus that differs by one byte is other data. The run id (tasks.plan.spec) and the token cache's
key both hash it; working it out reads no more than the input files' content digests
(tasks.data.digests), which are computed once per file version.
"""

from __future__ import annotations

from pathlib import Path

from tasks.config import DataConfig
from tasks.data.corpus import DataError, pile_files, text_files
from tasks.data.digests import file_digest
from tasks.data.genome import TOKENIZER_VERSION, genome_files
from tasks.data.sample_corpus import check_sample_dir, sample_params
from tasks.data.tokenizer import parse_spec


def corpus_path(cfg: DataConfig) -> Path | None:
    """The corpus folder of pile/text sources, checked to exist and hold files (no reading); None for sample."""
    if cfg.source == "sample":
        if cfg.path is not None:
            check_sample_dir(Path(cfg.path).expanduser())
        return None
    example = "/datasets/pile" if cfg.source == "pile" else "/datasets/my-text"
    fix = f"set data.path to the corpus folder (e.g. --set data.path={example})"
    if cfg.path is None:
        raise DataError(f"data.source {cfg.source!r} needs a corpus folder: {fix}")
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise DataError(f"data.path {path.absolute()}: no such folder (data.source {cfg.source!r}); {fix}")
    if cfg.source == "pile" and not pile_files(path)[0]:
        raise DataError(
            f"{path.absolute()}: no Pile train shards (NN.jsonl.zst, e.g. 00.jsonl.zst) in it or in its train/; {fix}"
        )
    if cfg.source == "text" and not text_files(path):
        raise DataError(f"{path.absolute()}: no .txt, .jsonl or .jsonl.zst files in it; {fix}")
    return path


def describe(path: Path, name: str) -> dict:
    return {"name": name, "size": path.stat().st_size, "sha256": file_digest(path)}


def corpus_identity(cfg: DataConfig, corpus: Path) -> dict:
    """A text or Pile corpus's files (by their names inside it), tokenizer, validation size and selection."""
    layout = "text" if cfg.source == "text" else "pile"
    if layout == "pile":
        shards, val = pile_files(corpus)
        sources = shards + ([val] if val else [])
    else:
        sources = text_files(corpus)
    _, _, tok_file = parse_spec(cfg.tokenizer)
    return {
        "layout": layout,
        "files": [describe(p, p.relative_to(corpus).as_posix()) for p in sources],
        "tokenizer": f"file:{file_digest(tok_file)}" if tok_file else cfg.tokenizer,
        "val_tokens": cfg.val_tokens,
        "subsets": cfg.subsets,
        "mixture": cfg.mixture,
        "on_bad_record": cfg.on_bad_record,
    }


def data_identity(cfg: DataConfig) -> dict:
    """The data a run of cfg trains and validates on, known before any cache is built.

    sample: the sample corpus is a function of its parameters (tasks.data.sample_corpus); hg38: the FASTA and
    the BED, as the genome cache keys them; pile and text: corpus_identity.
    """
    if cfg.source == "sample":
        params = sample_params(cfg.sample_bytes)
        return {"source": "sample", **params, "tokenizer": cfg.tokenizer, "val_tokens": cfg.val_tokens}
    if cfg.source == "hg38":
        fasta, bed = genome_files(cfg)
        files = [describe(fasta, fasta.name), describe(bed, bed.name)]
        return {"source": "hg38", "files": files, "tokenizer": f"char-v{TOKENIZER_VERSION}"}
    return {"source": cfg.source, **corpus_identity(cfg, corpus_path(cfg))}
