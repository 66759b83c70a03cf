"""The training process of one grid point: `python -m tasks.trainer RUN_DIR`.

Started by tasks.train (directly for one rank, through torchrun for several). Reads
RUN_DIR/spec.json (the RunSpec) and RUN_DIR/launch.json (where the token cache and MLflow
are), trains with a DeepSpeed ZeRO engine (fp32 master weights, bf16 autocast, AdamW,
warmup + cosine/WSD, clipping), evaluates, checkpoints, and writes RUN_DIR/status.json last.

Resume: a checkpoint counts only once its COMPLETE marker exists. The data order depends on
(seed, step) alone, so restoring the step restores the data position exactly; the checkpoint
also records that position with the token cache and loader it holds for, and a resume that
would read other data stops instead.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import implementations
from models.registry import build_model, config_from_dict
from tasks.data import TokenCache
from tasks.loader import read_intervals, train_batch, val_batches, val_windows, window_batch
from tasks.plan import RunSpec
from tasks.track import CurveLog
from tasks.track_mlflow import MetricSender

DIVERGED_AFTER_SKIPS = 5


def lr_lambda(spec: RunSpec):
    """Multiplier of the peak LR at a step: linear warmup, then cosine (or WSD) down to min_lr."""
    s = spec.schedule
    warm, total = spec.warmup_steps, spec.steps
    floor = min(s["min_lr"] / spec.lr, 1.0)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if s["kind"] == "wsd":
            decay_start = total - max(1, int(s["decay_fraction"] * total))
            if step < decay_start:
                return 1.0
            frac = (step - decay_start) / max(1, total - decay_start)
            return floor + (1 - floor) * (1 - frac)
        frac = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norms, embeddings and what the model names in no_weight_decay()
    (Mamba's A_log and D, RWKV's decays) stay undecayed, as in the Mamba authors' trainer."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name and name not in exempt else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ds_config(spec: RunSpec) -> dict:
    # bf16 is applied by autocast around the forward pass, not by DeepSpeed's bf16 mode, so that
    # master weights, gradients and optimizer state stay fp32 (the Mamba authors' advice for SSMs).
    return {
        "train_batch_size": spec.batch_tokens // spec.seq_len,
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "gradient_clipping": spec.optimizer["grad_clip"],
        "zero_optimization": {"stage": spec.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Checkpoints:
    """DeepSpeed checkpoints under RUN_DIR/ckpt with a completion marker DeepSpeed does not write."""

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = root, keep

    def latest(self) -> str | None:
        done = sorted(p.parent.name for p in self.root.glob("step*/COMPLETE"))
        return max(done, key=lambda t: int(t[4:]), default=None)

    def save(self, engine, step: int, state: dict) -> None:
        tag = f"step{step}"
        engine.save_checkpoint(str(self.root), tag=tag, client_state=state)
        torch.distributed.barrier()
        if engine.global_rank == 0:
            (self.root / tag / "COMPLETE").write_text(str(step))
            tags = sorted((p.parent for p in self.root.glob("step*/COMPLETE")), key=lambda p: int(p.name[4:]))
            for old in tags[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        torch.distributed.barrier()


@torch.no_grad()
def evaluate(engine, val, spec: RunSpec, autocast, spans=None) -> float:
    """Mean validation loss; `spans`, the val stream's interval index where it has one, keeps windows inside them."""
    engine.eval()
    total, n = 0.0, 0
    batches = (
        val_batches(val, spec.seq_len, spec.micro_batch_size, spec.val_tokens)
        if spans is None
        else val_windows(val, spans, spec.seq_len, spec.micro_batch_size, spec.val_tokens)
    )
    for x, y in batches:
        with autocast:
            logits = engine(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        n += y.numel()
    engine.train()
    return total / n


def watch_launcher(pid: int) -> None:
    """End this process group when the process that launched it is gone (killed or crashed), so that
    no training outlives its sweep even where no SIGTERM handler could run."""

    def watch():
        while True:
            time.sleep(2)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def write_status(run_dir: Path, **fields) -> None:
    tmp = run_dir / ".status.json.tmp"
    tmp.write_text(json.dumps(fields, indent=1))
    os.replace(tmp, run_dir / "status.json")


def main(run_dir: Path) -> int:
    spec = RunSpec.from_dict(json.loads((run_dir / "spec.json").read_text()))
    launch = json.loads((run_dir / "launch.json").read_text())
    watch_launcher(launch["launcher_pid"])
    torch.set_num_threads(launch["threads"])
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(launch["master_port"]))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = get_accelerator().current_device_name()
    torch.manual_seed(spec.seed)

    model = build_model(config_from_dict(spec.arch, spec.model))
    opt = torch.optim.AdamW(
        param_groups(model, spec.optimizer["weight_decay"]),
        lr=spec.lr,
        betas=tuple(spec.optimizer["betas"]),
        eps=spec.optimizer["eps"],
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_config(spec))
    dev_type = torch.device(device).type
    autocast = torch.autocast(dev_type, dtype=torch.bfloat16) if spec.precision == "bf16" else nullcontext()

    cache = TokenCache.open(Path(launch["cache_dir"]))
    train, val = cache.train_tokens(), cache.val_tokens()
    train_spans, val_spans = read_intervals(cache.dir, "train"), read_intervals(cache.dir, "val")
    curve = CurveLog(
        run_dir / "curve",
        {k: getattr(spec, k) for k in ("sweep", "run_id", "arch", "n_params", "n_params_nonembed", "tokens", "lr")},
    )
    ckpts = Checkpoints(run_dir / "ckpt")
    # MLflow from a background thread: a slow or dead tracking store never holds up a step.
    sender = None
    if rank == 0 and launch.get("mlflow_run_id"):
        sender = MetricSender(launch["mlflow_uri"], launch["mlflow_run_id"])
    impls = implementations(torch.device(device).type)
    if sender:
        sender.tag({f"{op}_impl": impl for op, impl in impls.items()})

    if rank == 0:
        paths = ", ".join(f"{op} {impl}" for op, impl in impls.items())
        print(
            f"{spec.name}: {world} rank(s) on {device}, ZeRO stage {spec.zero_stage}, {spec.precision}; "
            f"kernels: {paths}",
            flush=True,
        )

    def data_position(step: int) -> dict:
        # The batches are a function of these alone, so a resume from them sees the same tokens.
        loader = "random windows" if train_spans is None else "interval windows"
        return {"cache_key": cache.key, "loader": loader, "seed": spec.seed, "next_step": step}

    start, wall_before = 0, 0.0
    tag = ckpts.latest()
    if tag:
        _, state = engine.load_checkpoint(str(ckpts.root), tag=tag)
        if state["data"] != data_position(state["step"]):
            raise SystemExit(
                f"{ckpts.root / tag} was trained on other data ({state['data']}); this run reads "
                f"{data_position(state['step'])}: remove {ckpts.root} to start the run again"
            )
        start, wall_before = state["step"], state["wall_s"]
        torch.set_rng_state(state["rng"])
        if rank == 0:
            curve.truncate(after_step=start)
            print(f"resumed from {tag} (step {start} of {spec.steps})", flush=True)

    batch_per_rank = spec.batch_tokens // spec.seq_len // world
    t0, t_last, last_logged, step_tokens = time.time(), time.time(), start, spec.batch_tokens
    train_loss = val_loss = float("nan")
    status, done, bad_streak = "completed", start, 0
    for step in range(start, spec.steps):
        if train_spans is None:
            x, y = train_batch(train, step, rank, world, batch_per_rank, spec.seq_len, spec.seed)
        else:
            x, y = window_batch(train, train_spans, step, rank, world, batch_per_rank, spec.seq_len, spec.seed)
        x, y = x.to(device), y.to(device)
        losses = []
        for xm, ym in zip(x.split(spec.micro_batch_size), y.split(spec.micro_batch_size)):
            with autocast:
                logits = engine(xm)
            loss = F.cross_entropy(logits.float().flatten(0, 1), ym.flatten())
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
        train_loss = torch.stack(losses).mean().item()
        grad_norm = float(engine.get_global_grad_norm() or float("nan"))
        done = step + 1
        # DeepSpeed skips an update whose gradients are not finite, so a blown-up run can go on
        # with a finite loss forever; a streak of skipped updates counts as divergence too.
        bad_streak = bad_streak + 1 if not math.isfinite(grad_norm) else 0
        if not math.isfinite(train_loss) or bad_streak >= DIVERGED_AFTER_SKIPS:
            status = "diverged"
        last = done == spec.steps or status == "diverged"
        if done % spec.eval_interval == 0 or last:
            val_loss = evaluate(engine, val, spec, autocast, val_spans) if status == "completed" else float("nan")
        if rank == 0 and (done % spec.log_interval == 0 or last or done % spec.eval_interval == 0):
            now = time.time()
            curve.append(
                step=done,
                tokens_seen=done * step_tokens,
                flops=done * step_tokens * spec.flops_per_token,
                train_loss=train_loss,
                val_loss=val_loss if done % spec.eval_interval == 0 or last else float("nan"),
                lr_now=sched.get_last_lr()[0],
                grad_norm=grad_norm,
                tokens_per_s=(done - last_logged) * step_tokens / max(now - t_last, 1e-9),
                wall_s=wall_before + now - t0,
                timestamp_ms=int(now * 1000),
            )
            t_last, last_logged = now, done
        if status == "diverged":
            break
        if done % spec.checkpoint_interval == 0 and not last:
            rows = curve.flush() if rank == 0 else []
            ckpts.save(
                engine,
                done,
                {
                    "step": done,
                    "wall_s": wall_before + time.time() - t0,
                    "rng": torch.get_rng_state(),
                    "data": data_position(done),
                },
            )
            if sender:
                sender.send(rows)

    if rank == 0:
        rows = curve.flush()
        if sender:
            sender.send(rows)
        write_status(
            run_dir,
            status=status,
            step=done,
            train_loss=train_loss,
            val_loss=val_loss,
            wall_s=wall_before + time.time() - t0,
        )
        print(f"{status}: step {done}, train_loss {train_loss:.4f}, val_loss {val_loss:.4f}", flush=True)
        if sender:  # bounded: what is still queued is in Parquet, and the flow re-sends the whole curve
            sender.close(timeout_s=10.0)
    torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
