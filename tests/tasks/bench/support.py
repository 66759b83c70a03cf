"""For the benchmarks' tests: reading back the tables tasks.bench.table prints, so that tests check
cells rather than text, and the `--set` flags that shrink the sample sweep to a tiny one."""

from __future__ import annotations

import re

RATIO = re.compile(r"\d+\.\d\dx")
# The sample sweep cut to seconds: 400 kB of corpus, a 320-token BPE, windows of 32, 1024 tokens a step.
TINY_SETS = [
    x
    for kv in ("data.sample_bytes=400000", "data.tokenizer=bpe:320", "data.seq_len=32", "data.val_tokens=4096")
    + ("train.batch_tokens=1024",)
    for x in ("--set", kv)
]


def read_tables(out: str) -> dict[str, list[dict[str, str]]]:
    """Every table in `out`: its title -> its rows, each {column: cell}, cut where the rule's dashes are."""
    lines = out.splitlines()
    tables = {}
    for i, rule in enumerate(lines):
        if i < 2 or not rule.startswith("-") or set(rule) != {"-", " "}:
            continue
        spans = [m.span() for m in re.finditer(r"-+", rule)]

        def cells(line: str) -> list[str]:
            return [line[a:b].strip() for a, b in spans]

        header, rows = cells(lines[i - 1]), []
        for line in lines[i + 1 :]:
            if not line.strip():
                break
            rows.append(dict(zip(header, cells(line))))
        tables[lines[i - 2]] = rows
    return tables


def table(out: str, title_start: str) -> dict[str, dict[str, str]]:
    """The one table whose title starts with `title_start`: its rows by their first cell."""
    found = [rows for title, rows in read_tables(out).items() if title.startswith(title_start)]
    assert len(found) == 1, f"{len(found)} tables titled {title_start!r} in:\n{out}"
    return {next(iter(row.values())): row for row in found[0]}
