"""Setup: everything a training process holds, from its run folder to a DeepSpeed engine on its device.

The optimizer is AdamW over fp32 master weights, with decay on matrices only; the schedule is linear
warmup then cosine (or WSD) to min_lr; bf16 is autocast around the forward pass.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kernels import implementations
from models.registry import build_model, config_from_dict
from tasks.data import TokenCache
from tasks.data.loader import read_intervals
from tasks.layout import RunDir
from tasks.plan import RunSpec
from tasks.track.curves import CurveLog
from tasks.track.events import EventLog
from tasks.track.mlflow_store import MetricSender
from tasks.train import devices
from tasks.train.faults import Faults
from tasks.train.resume import Checkpoints

CURVE_CONSTANTS = ("sweep", "run_id", "arch", "n_params", "n_params_nonembed", "tokens", "lr")
"""The RunSpec fields every curve row carries."""


@dataclass
class Session:
    """One training process of one run: its spec, its rank, its engine and what it reads and writes."""

    spec: RunSpec
    run: RunDir
    rank: int
    world: int
    device: str
    engine: object
    """The DeepSpeed engine around the model, optimizer and schedule."""
    sched: torch.optim.lr_scheduler.LambdaLR
    autocast: AbstractContextManager
    cache: TokenCache
    train: np.memmap
    val: np.memmap
    train_spans: np.ndarray | None
    """The train stream's interval index, where it has one (a genome): windows stay inside intervals."""
    val_spans: np.ndarray | None
    curve: CurveLog
    events: EventLog
    ckpts: Checkpoints
    sender: MetricSender | None
    """MLflow, from a background thread on rank 0: a slow or dead store never holds up a step."""
    faults: Faults
    """What the fault suite injects (tasks.train.faults); none in a sweep."""


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


class AdamW(torch.optim.AdamW):
    """AdamW that skips an update whose gradients are not finite, and says so the way DeepSpeed's ZeRO
    optimizers do (`overflow`: the engine then counts a skipped step and holds the schedule).

    Under ZeRO stages 1-3 DeepSpeed's own optimizer checks first, and this one only sees finite gradients.
    Under stage 0 DeepSpeed checks nothing, so this one does, clips (`clip`: stage 0 clips here, not in
    DeepSpeed, to see the norm before clipping) and reports the norm as `_global_grad_norm`."""

    def __init__(self, params, clip: float = 0.0, **kwargs):
        super().__init__(params, **kwargs)
        self.clip, self.overflow, self._global_grad_norm = clip, False, None

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip or float("inf"))
        self.overflow, self._global_grad_norm = not bool(torch.isfinite(norm)), norm
        return None if self.overflow else super().step(closure)


def ds_config(spec: RunSpec) -> dict:
    # bf16 is applied by autocast around the forward pass, not by DeepSpeed's bf16 mode, so that
    # master weights, gradients and optimizer state stay fp32 (the Mamba authors' advice for SSMs).
    return {
        "train_batch_size": spec.batch_tokens // spec.seq_len,
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "gradient_clipping": spec.optimizer["grad_clip"] if spec.zero_stage > 0 else 0.0,  # stage 0: AdamW clips
        "zero_optimization": {"stage": spec.zero_stage},
        "zero_allow_untested_optimizer": True,  # AdamW below is torch's AdamW, checked for finite gradients
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


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


def _distributed(launch: dict) -> tuple[int, int]:
    """Join the process group (one rank alone when not under tasks.train.ranks or tasks.train.node); returns
    (rank, world).

    Its store is served by rank 0 on the socket the launcher bound to 127.0.0.1: one that torch.distributed
    made itself would listen on every interface. DeepSpeed then takes the group as it is, and still reads
    the rank variables (and names its shared-memory op after MASTER_ADDR and MASTER_PORT)."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.constants import default_pg_timeout

    backend = get_accelerator().communication_backend_name()
    if launch["store_fd"] is None:  # one node of several, under torchrun: its rendezvous set MASTER_ADDR and PORT
        torch.distributed.init_process_group(backend, timeout=default_pg_timeout)  # across nodes: torchrun's store
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(launch["master_port"]))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = torch.distributed.TCPStore(
        "127.0.0.1",
        launch["master_port"],
        world,
        is_master=rank == 0,
        timeout=default_pg_timeout,
        master_listen_fd=launch["store_fd"] if rank == 0 else None,
    )
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=default_pg_timeout)
    return rank, world


def _engine(spec: RunSpec):
    import deepspeed

    model = build_model(config_from_dict(spec.arch, spec.model))
    opt = AdamW(
        param_groups(model, spec.optimizer["weight_decay"]),
        clip=spec.optimizer["grad_clip"] if spec.zero_stage == 0 else 0.0,
        lr=spec.lr,
        betas=tuple(spec.optimizer["betas"]),
        eps=spec.optimizer["eps"],
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_config(spec))
    return engine, sched


def start(run: RunDir, launch_file: Path) -> Session:
    """Read the run's spec and launch record, join the process group and build the engine, data and logs."""
    device = devices.set_rank_device(int(os.environ.get("LOCAL_RANK", "0")))  # first: before anything touches a GPU
    spec = RunSpec.from_dict(run.read_spec())
    launch = json.loads(launch_file.read_text())
    watch_launcher(launch["launcher_pid"])
    torch.set_num_threads(launch["threads"])
    rank, world = _distributed(launch)
    torch.manual_seed(spec.seed)
    engine, sched = _engine(spec)
    dev_type = torch.device(device).type
    autocast = torch.autocast(dev_type, dtype=torch.bfloat16) if spec.precision == "bf16" else nullcontext()
    cache = TokenCache.open(Path(launch["cache_dir"]))
    faults = Faults.from_env()
    sender = None
    if rank == 0 and launch.get("mlflow_run_id"):
        sender = MetricSender(launch["mlflow_uri"], launch["mlflow_run_id"])
    session = Session(
        spec=spec,
        run=run,
        rank=rank,
        world=world,
        device=device,
        engine=engine,
        sched=sched,
        autocast=autocast,
        cache=cache,
        train=cache.train_tokens(),
        val=cache.val_tokens(),
        train_spans=read_intervals(cache.dir, "train"),
        val_spans=read_intervals(cache.dir, "val"),
        curve=CurveLog(run.curve, {k: getattr(spec, k) for k in CURVE_CONSTANTS}),
        events=EventLog(run.events, {"sweep": spec.sweep, "run_id": spec.run_id}),
        ckpts=Checkpoints(run.ckpt, faults),
        sender=sender,
        faults=faults,
    )
    _announce(session, implementations(dev_type))
    return session


def _announce(s: Session, impls: dict[str, str]) -> None:
    """Every kernel's chosen path, in the run's MLflow tags and its log."""
    if s.sender:
        s.sender.tag({f"{op}_impl": impl for op, impl in impls.items()})
    if s.rank == 0:
        paths = ", ".join(f"{op} {impl}" for op, impl in impls.items())
        print(
            f"{s.spec.name}: {s.world} rank(s) on {s.device}, ZeRO stage {s.spec.zero_stage}, {s.spec.precision}; "
            f"kernels: {paths}",
            flush=True,
        )
