"""tasks.cluster.slurm against a real two-node Slurm started here (slurm_cluster): a tiny sweep from `scaling run`
to its report, one Slurm job per run on the GPUs Slurm assigns; a run over both nodes as one job; a run past its
walltime requeued and resumed, seen by Prefect as a retry; a cancelled sweep leaving no job behind. The job
parameters are checked without Slurm."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.cluster.slurm import sbatch_parameters, walltime_min
from tasks.config import ConfigError, load_sweep, parse_overrides
from tasks.layout import Layout, RunDir
from tasks.plan import plan_sweep
from tasks.train.launch import train_run
from tests.conftest import ROOT, curve_losses, scaling, tiny_sweep
from tests.tasks.train.test_ranks import TOLERANCE, differences

ON_SLURM = [
    "resources.executor=slurm",
    "cluster.slurm.poll_s=1",
    "cluster.slurm.cpus_per_rank=1",
    "cluster.slurm.time_min=10",
    "resources.retry_delay_s=1",
]


def sets(pairs: list[str]) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def sweep_command(slurm, sweep: Path, out: Path, *extra: str) -> list[str]:
    exe = Path(sys.executable).with_name("scaling")
    return slurm.command(exe, "run", sweep, "--output", out, *sets(ON_SLURM + list(extra)))


def run_sweep(slurm, sweep: Path, out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        sweep_command(slurm, sweep, out, *extra),
        cwd=ROOT,
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{slurm.log()}"
    return proc


def runs_of(sweep: Path, out: Path):
    plan = plan_sweep(load_sweep(sweep))
    return plan, [Layout.at(out).run(s.run_id) for s in plan.runs]


@pytest.mark.slow
def test_a_sweep_trains_on_slurm_to_its_report_one_job_per_run(slurm, tmp_path):
    sweep, out = tiny_sweep(tmp_path), tmp_path / "out"
    proc = run_sweep(slurm, sweep, out)
    assert re.search(r"sweep finished in \d+ s: 2 completed", proc.stdout), proc.stdout[-3000:]
    assert Path(re.search(r"report: (\S+)", proc.stdout).group(1)).is_file()
    plan, runs = runs_of(sweep, out)
    jobs = {json.loads(r.slurm_job.read_text())["job_id"] for r in runs}
    assert len(jobs) == 2, jobs  # a job of its own for each run
    for run in runs:
        job = json.loads(run.slurm_job.read_text())["job_id"]
        line = re.search(rf"slurm job {job} \(restart 0\) on \S+, GPUs (\S+)", run.log.read_text())
        assert line and line.group(1) in {"0", "1"}, run.log.read_text()[-2000:]  # Slurm's GPU for its one rank
    assert slurm.jobs() == []

    # Planned again on this machine, with no Slurm: both are recognised as finished and nothing trains.
    logs = {r.run_id: r.log.read_text() for r in runs}
    again = scaling("run", sweep, "--output", out)
    assert "2 completed" in again.stdout
    assert {r.run_id: r.log.read_text() for r in runs} == logs
    assert slurm.jobs() == []


@pytest.mark.slow
def test_a_run_over_two_nodes_is_one_job_whose_nodes_meet_at_the_rendezvous(slurm, tmp_path):
    sweep, out = tiny_sweep(tmp_path, sizes="[t1]", multipliers="[2.0]"), tmp_path / "out"
    two = ["resources.nodes_per_run=2", "train.zero_stage=2"]
    run_sweep(slurm, sweep, out, *two)
    (spec,) = plan_sweep(load_sweep(sweep, parse_overrides(ON_SLURM + two))).runs
    run = Layout.at(out).run(spec.run_id)
    job = json.loads(run.slurm_job.read_text())["job_id"]
    record = slurm.run("scontrol", "show", "job", "-o", job)
    assert re.search(r"\bNodeList=n\[1-2\]", record) and re.search(r"\bJobState=COMPLETED", record), record
    log = run.log.read_text()
    assert log.count("2 rank(s) on cpu") == 1 and run.status() == "completed", log[-3000:]  # one process group
    # The negative control: the same run as 2 ranks on one node (the same run id) trains the same curve.
    ref = RunDir(tmp_path / "one-node")
    one = plan_sweep(load_sweep(sweep, parse_overrides(["resources.ranks_per_run=2", "train.zero_stage=2"]))).runs[0]
    assert one.run_id == run.run_id
    assert train_run(one, ref, next((out / "data").glob("tokens-*")), 1).status == "completed"
    assert max(differences(curve_losses(ref), curve_losses(run))) <= TOLERANCE


@pytest.mark.slow
def test_a_run_past_its_walltime_is_requeued_and_resumes_as_a_prefect_retry(slurm, tmp_path, fired):
    # The run stalls once at step 20 (checkpoints at every 4th step): it outlives the walltime it is then given,
    # however long its first steps took (a fresh machine JIT-builds DeepSpeed's op first).
    sweep = tiny_sweep(tmp_path, sizes="[t1]", multipliers="[4]", checkpoint_interval=4)
    out = tmp_path / "out"
    plan, (run,) = runs_of(sweep, out)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"stall_at": [20, 600]}))
    cmd = sweep_command(slurm, sweep, out, "cluster.slurm.signal_s=30")
    env = {**slurm.env, "SCALING_FAULTS": str(faults)}
    flow = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = wait_for(lambda: json.loads(run.slurm_job.read_text())["job_id"] if run.slurm_job.exists() else None)
        wait_for(lambda: run.log.exists() and "fault: stall" in run.log.read_text(), timeout=300)
        # Cut to end 40-100 s from now (whole minutes): Slurm sends the walltime signal (B:USR2@30) first.
        limit_min = -(-(run_time_s(slurm, job) + 40) // 60)
        slurm.run("scontrol", "update", f"JobId={job}", f"TimeLimit={limit_min}")
        cut = time.time()
        wait_for(lambda: json.loads(run.slurm_job.read_text())["restarts_seen"], timeout=240)
        requeued = time.time()
        # Requeued. Slurm holds a requeued job ~2 minutes before it may start again (BeginTime), and would
        # signal it again within seconds: it starts now (StartTime), with room to finish.
        slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=10", "StartTime=now")
        wait_for(lambda: "resumed from" in run.log.read_text(), timeout=240)
        print(f"walltime cut -> requeue seen {requeued - cut:.0f} s -> resumed {time.time() - requeued:.0f} s later")
        output, _ = flow.communicate(timeout=400)
    finally:
        flow.kill()
    log = run.log.read_text()
    fired("(restart 0)" in log and "(restart 1)" in log, "Slurm's walltime signal requeued the job")
    assert flow.returncode == 0, output[-5000:]
    assert re.findall(r"slurm job (\d+) \(restart", log) == [job, job]  # requeued: the same job, not another
    resumed = re.search(r"resumed from \S+ \(step (\d+) of", log)
    assert resumed and int(resumed.group(1)) == 20, log[-3000:]  # from its checkpoint, not from the start
    assert "requeued (1 time(s))" in output and re.search(r"Retry 1/\d+ will start", output), output[-5000:]
    assert run.status() == "completed"
    # Negative control on the curve: the same run trained once, on this machine, gives the same losses.
    ref_out = tmp_path / "ref-out"
    scaling("run", sweep, "--output", ref_out)
    (ref_run,) = runs_of(sweep, ref_out)[1]
    assert curve_losses(run) == curve_losses(ref_run)


@pytest.mark.slow
def test_a_cancelled_sweep_leaves_no_job_behind(slurm, tmp_path):
    sweep, out = tiny_sweep(tmp_path, multipliers="[4]"), tmp_path / "out"
    flow = subprocess.Popen(
        sweep_command(slurm, sweep, out), cwd=ROOT, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        queued = wait_for(lambda: (jobs := slurm.jobs()) and len(jobs) == 2 and jobs)
        assert all(j.split()[1] in {"RUNNING", "PENDING"} for j in queued)  # the check below could fail
        os.kill(flow.pid, signal.SIGTERM)  # what a Prefect worker does to a cancelled flow run's process
        flow.wait(timeout=60)
    finally:
        flow.kill()
    assert wait_for(lambda: slurm.jobs() == [], timeout=30), slurm.jobs()


def run_time_s(slurm, job: str) -> int:
    """How long the job has run, from `scontrol show job` (RunTime=[D-]HH:MM:SS)."""
    found = re.search(r"RunTime=(?:(\d+)-)?(\d+):(\d+):(\d+)", slurm.run("scontrol", "show", "job", "-o", job))
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def wait_for(probe, timeout: float = 120, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := probe():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s")


def spec_of(tmp_path, **sets):
    cfg = load_sweep(tiny_sweep(tmp_path), {"resources.executor": "slurm", **sets})
    return plan_sweep(cfg).runs[0], cfg.cluster.slurm


def test_a_jobs_parameters_come_from_the_run_and_the_sites_profile(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text(
        "slurm:\n  partition: gpu\n  account: lab\n  qos: high\n  time_min: 90\n  mem_gb: 64\n"
        "  setup: [module load cuda]\n  sbatch: {constraint: h100}\n"
    )
    spec, cfg = spec_of(tmp_path, **{"cluster": str(profile), "resources.ranks_per_run": 4})
    p = sbatch_parameters(spec, cfg, threads=8)
    assert (p["partition"], p["account"], p["qos"], p["time"], p["mem"]) == ("gpu", "lab", "high", 90, "65536M")
    assert (p["nodes"], p["ntasks_per_node"], p["gpus_per_node"], p["cpus_per_task"]) == (1, 1, 4, 32)
    assert p["setup"] == ["module load cuda"] and p["additional_parameters"]["constraint"] == "h100"
    assert p["additional_parameters"]["signal"] == "B:USR2@120" and p["use_srun"] is False


def test_a_run_over_nodes_asks_each_node_for_its_ranks_and_a_site_may_want_gres(tmp_path):
    sets = {"resources.ranks_per_run": 2, "resources.nodes_per_run": 2, "cluster.slurm.gpu_flag": "gres"}
    spec, cfg = spec_of(tmp_path, **sets)
    p = sbatch_parameters(spec, cfg, threads=1)
    assert (p["nodes"], p["gres"], p["cpus_per_task"]) == (2, "gpu:2", 2) and "gpus_per_node" not in p
    assert p["time"] == walltime_min(spec) >= 10  # no time_min: from the run's estimate
    cpu, cfg = spec_of(tmp_path, **{"cluster.slurm.gpus_per_rank": 0})
    assert "gpus_per_node" not in sbatch_parameters(cpu, cfg, 1) and "gres" not in sbatch_parameters(cpu, cfg, 1)


def test_a_bad_profile_is_one_error_naming_its_file_and_line(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text("slurm:\n  partiton: gpu\n")
    with pytest.raises(
        ConfigError, match=r"(?s)site.yaml: invalid cluster profile.*line 2, slurm.partiton: unknown field"
    ):
        spec_of(tmp_path, cluster=str(profile))
    with pytest.raises(ConfigError, match="cluster: profile file 'nowhere.yaml' not found"):
        spec_of(tmp_path, cluster="nowhere.yaml")
