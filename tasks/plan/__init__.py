"""Plan: the sweep's grid of RunSpecs with parameter, FLOP and time counts, before any compute."""

from tasks.plan.estimate import format_plan, measure_flops_per_s, run_states, threads_per_rank
from tasks.plan.grid import plan_sweep
from tasks.plan.spec import CODE_VERSION, Plan, RunSpec

__all__ = [
    "CODE_VERSION",
    "Plan",
    "RunSpec",
    "format_plan",
    "measure_flops_per_s",
    "plan_sweep",
    "run_states",
    "threads_per_rank",
]
