from tasks.train.resume import Checkpoints


def test_a_checkpoint_counts_only_with_its_marker(tmp_path):
    ck = Checkpoints(tmp_path)
    (tmp_path / "step10").mkdir()
    (tmp_path / "step10" / "COMPLETE").write_text("10")
    (tmp_path / "step20").mkdir()  # written, never completed: a kill during save
    assert ck.latest() == "step10"
    (tmp_path / "step100").mkdir()
    (tmp_path / "step100" / "COMPLETE").write_text("100")
    assert ck.latest() == "step100"
