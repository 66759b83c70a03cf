"""tasks.train.resume: a checkpoint counts once sealed, and is loaded only while its files match the seal."""

import json

import pytest

from tasks.train.resume import MANIFEST, Checkpoints, damage, seal


def checkpoint(root, step: int, seal_it: bool = True):
    folder = root / f"step{step}"
    (folder / "zero").mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 40)
    (folder / "zero" / "optim_states.pt").write_bytes(b"adam" * 1000)
    if seal_it:
        seal(folder, step)
    return folder


def test_a_checkpoint_counts_only_with_its_marker(tmp_path):
    ck = Checkpoints(tmp_path)
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 20, seal_it=False)  # written, never completed: a kill during save
    assert ck.latest() == ("step10", [])
    checkpoint(tmp_path, 100)
    assert ck.latest() == ("step100", [])


def truncate(folder):
    (folder / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 20)


def flip(folder):
    data = bytearray((folder / "zero" / "optim_states.pt").read_bytes())
    data[len(data) // 2] ^= 0x40
    (folder / "zero" / "optim_states.pt").write_bytes(data)


def delete(folder):
    (folder / "zero" / "optim_states.pt").unlink()


def stray(folder):
    (folder / "zero" / "evil.pt").write_bytes(b"not written by this run")


def no_manifest(folder):
    (folder / MANIFEST).unlink()


@pytest.mark.parametrize(
    "fault, why",
    [
        (truncate, "mp_rank_00_model_states.pt does not match its manifest (5120 of 10240 bytes)"),
        (flip, "zero/optim_states.pt does not match its manifest"),
        (delete, "zero/optim_states.pt is missing"),
        (stray, "zero/evil.pt is not in its manifest"),
        (no_manifest, "no readable MANIFEST.json"),
    ],
)
def test_a_damaged_newest_checkpoint_gives_way_to_the_one_before(tmp_path, fault, why):
    checkpoint(tmp_path, 10)
    newest = checkpoint(tmp_path, 20)
    assert damage(newest) is None  # the negative control: sealed and untouched, it is sound
    assert Checkpoints(tmp_path).latest() == ("step20", [])
    fault(newest)
    tag, rejected = Checkpoints(tmp_path).latest()
    assert tag == "step10"
    assert len(rejected) == 1 and rejected[0][0] == 20 and rejected[0][1].startswith(why)


def test_the_manifest_lists_every_file_with_its_digest(tmp_path):
    folder = checkpoint(tmp_path, 10)
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(files) == {"mp_rank_00_model_states.pt", "zero/optim_states.pt"}
    assert files["zero/optim_states.pt"]["size"] == 4000 and len(files["zero/optim_states.pt"]["sha256"]) == 64
