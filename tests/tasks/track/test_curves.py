import pyarrow.parquet as pq

from tasks.track.curves import CurveLog, read_curve


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
