"""The training process of one run: `python -m tasks.train.process RUN_DIR LAUNCH_FILE`.

Started by tasks.train.launch (directly for one rank, through tasks.train.ranks for several). Reads the run's
spec.json (the RunSpec) and its launcher's launch record (where the token cache and MLflow are), trains with a DeepSpeed
ZeRO engine (fp32 master weights, bf16 autocast, AdamW, warmup + cosine/WSD, clipping), evaluates,
checkpoints, and writes status.json last:

    setup    the process group, engine, data, curve log and MLflow sender (tasks.train.setup)
    resume   the newest complete checkpoint, if the run has one (tasks.train.resume)
    step     the loop: steps, evaluations, curve rows, checkpoints, divergence (tasks.train.step)
    finish   the curve committed and the status written (tasks.train.finish)
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.layout import RunDir
from tasks.train.disk import EXIT_DISK_FULL, is_disk_full
from tasks.train.finish import finish
from tasks.train.resume import resume
from tasks.train.setup import start
from tasks.train.step import train


def main(run_dir: Path, launch_file: Path) -> int:
    session = start(RunDir(run_dir), launch_file)
    try:
        first_step, wall_before = resume(session)
        finish(session, train(session, first_step, wall_before))
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err, run_dir):
            raise
        # No traceback: the launcher names the cause (tasks.train.disk), and the log may not take a line.
        try:
            print(f"disk full: {err}", flush=True)
        except OSError:
            pass
        return EXIT_DISK_FULL
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
