import pytest

from tasks.bench.table import format_table, ratio
from tests.tasks.bench.support import table


def test_ratio_formats_value_over_baseline_and_dashes_a_zero_baseline():
    assert ratio(33.0, 2.0) == "16.50x"
    assert ratio(1.0, 1.0) == "1.00x"
    assert ratio(5.0, 0.0) == "-"


def test_format_table_aligns_names_left_and_figures_right():
    text = format_table(
        ["path", "ms", "speed-up vs ref"], [["ref", "921.0", ratio(921, 921)], ["fast", "60.2", "15.30x"]]
    )
    assert text.splitlines() == [
        "path     ms  speed-up vs ref",
        "----  -----  ---------------",
        "ref   921.0            1.00x",
        "fast   60.2           15.30x",
    ]


def test_format_table_rejects_a_row_without_a_cell_per_column():
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["path", "ms"], [["ref"]])


def test_a_printed_table_reads_back_cell_by_cell():
    # print_table starts each table with a blank line, so a blank line also ends the one before.
    out = "\nthe title\n" + format_table(["", "s"], [["ref", "1.5"], ["fast", ""]]) + "\n\nnot a row\n"
    rows = table(out, "the title")
    assert rows == {"ref": {"": "ref", "s": "1.5"}, "fast": {"": "fast", "s": ""}}
