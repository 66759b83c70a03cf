"""How every benchmark prints its figures, so that all of them read the same way: fixed-width tables,
the baseline first where it is a row, and ratio columns (`ratio`) against it."""

from __future__ import annotations

from collections.abc import Sequence


def ratio(a: float, b: float) -> str:
    """`a / b` as a ratio cell, "16.50x": a figure over the baseline's, or for a speed-up the baseline's
    time over the figure's. "-" where b is zero (a figure that did not register at a tiny size, such as
    memory below the resident set's resolution)."""
    return f"{a / b:.2f}x" if b else "-"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header, a rule and the rows, each column as wide as its widest cell: the first (the row's
    name) left-aligned, the figures right-aligned so that their digits line up."""
    cells = [[str(c) for c in columns], *([str(c) for c in row] for row in rows)]
    if any(len(row) != len(columns) for row in cells):
        raise ValueError(f"every row needs {len(columns)} cells, one per column: {columns}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n{title}\n{format_table(columns, rows)}", flush=True)
