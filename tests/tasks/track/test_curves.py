import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.track.curves import CurveDamage, CurveLog, curve_damage, curve_schema, read_curve


def log(tmp_path, steps):
    c = CurveLog(
        tmp_path / "curve",
        {"sweep": "s", "run_id": "r", "arch": "a", "n_params": 1, "n_params_nonembed": 1, "tokens": 10, "lr": 0.1},
    )
    for s in steps:
        c.append(
            step=s,
            tokens_seen=s,
            flops=1.0,
            train_loss=1.0 / s,
            val_loss=float("nan"),
            lr_now=0.1,
            grad_norm=1.0,
            tokens_per_s=1.0,
            wall_s=float(s),
            timestamp_ms=1000 * s,
        )
    return c


def test_parts_are_whole_files_and_read_back_in_order(tmp_path):
    c = log(tmp_path, [5, 10])
    c.flush()
    for s in (15, 20):
        c.append(**{**c.constants, "step": s, "tokens_seen": s, "timestamp_ms": s})
    c.flush()
    assert [p.name for p in sorted((tmp_path / "curve").iterdir())] == [
        "part-000000010.parquet",
        "part-000000020.parquet",
    ]
    assert read_curve(tmp_path / "curve")["step"].to_pylist() == [5, 10, 15, 20]


def test_truncate_drops_rows_past_the_checkpoint(tmp_path):
    c = log(tmp_path, [5, 10, 15, 20])
    c.flush()
    c.truncate(after_step=12)
    t = read_curve(tmp_path / "curve")
    assert t["step"].to_pylist() == [5, 10]
    assert [p.name for p in (tmp_path / "curve").iterdir()] == ["part-000000010.parquet"]
    c.truncate(after_step=0)
    assert read_curve(tmp_path / "curve").num_rows == 0


def test_no_temp_file_is_left_and_checksums_are_written(tmp_path):
    c = log(tmp_path, [5])
    c.flush()
    files = list((tmp_path / "curve").iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".")
    assert pq.ParquetFile(files[0]).metadata.num_rows == 1


def three_parts(tmp_path) -> CurveLog:
    c = log(tmp_path, [5, 10])
    c.flush()
    for steps in ([15, 20], [25, 30]):
        for s in steps:
            c.append(**{k: v for k, v in log(tmp_path, [s]).pending[0].items() if k not in c.constants})
        c.flush()
    return c


def values(table) -> list[tuple]:
    return [tuple("nan" if v != v else v for v in row.values()) for row in table.cast(curve_schema()).to_pylist()]


@pytest.mark.slow
@pytest.mark.fault("parquet")
def test_a_flipped_bit_anywhere_in_a_part_is_caught_or_harmless(tmp_path, fired):
    c = three_parts(tmp_path)
    whole = values(read_curve(c.dir))
    part = sorted(c.dir.glob("part-*.parquet"))[1]
    original = part.read_bytes()
    caught = harmless = 0
    for i in range(len(original)):  # every byte, a different bit of each in turn
        flipped = bytearray(original)
        flipped[i] ^= 1 << (i % 8)
        part.write_bytes(flipped)
        try:
            rows = values(read_curve(c.dir))
        except CurveDamage:
            caught += 1
        else:
            assert rows == whole, f"byte {i}: a flip changed the rows unseen"
            harmless += 1  # bytes the reader does not use, such as statistics
    fired(caught + harmless == len(original), f"flipped one bit of each of the {len(original)} bytes")
    assert caught > harmless


@pytest.mark.fault("parquet")
def test_rows_changed_behind_the_page_checksums_are_caught(tmp_path, fired):
    c = three_parts(tmp_path)
    part = sorted(c.dir.glob("part-*.parquet"))[1]
    table = pq.read_table(part)
    # What a flip in a page header or the footer can do: other values, in pages whose checksums hold.
    changed = table.set_column(table.schema.get_field_index("train_loss"), "train_loss", pa.array([0.5, 0.25]))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), part, write_page_checksum=True)
    # The negative control: Parquet's own checks pass the part, with the other values.
    seen = pq.read_table(part, page_checksum_verification=True)["train_loss"].to_pylist()
    fired(seen == [0.5, 0.25], "rewrote a part's losses behind valid page checksums")
    with pytest.raises(CurveDamage, match="its rows do not match the digest written with them"):
        read_curve(c.dir)


@pytest.mark.fault("parquet")
def test_a_short_or_unreadable_curve_is_named_and_a_stray_temporary_is_not_read(tmp_path, fired):
    c = three_parts(tmp_path)
    assert curve_damage(c.dir, 6) is None  # the negative control: whole, with the rows its run logged
    (c.dir / ".part-000000035.parquet.tmp-1-abc").write_bytes(b"a writer killed mid-write")
    assert curve_damage(c.dir, 6) is None
    middle = sorted(c.dir.glob("part-*.parquet"))[1]
    data = middle.read_bytes()
    middle.unlink()
    fired(not middle.exists(), f"deleted {middle.name}")
    assert curve_damage(c.dir, 6) == "the curve has 4 of the 6 rows its run logged"
    middle.write_bytes(data[: len(data) // 2])
    assert curve_damage(c.dir, 6).startswith(f"curve part {middle.name}: ")
    with pytest.raises(CurveDamage, match=middle.name):
        read_curve(c.dir)
