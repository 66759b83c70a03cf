"""The GPU work-pool template renders through Prefect's worker code into a Job that Kubernetes' schema accepts."""

import asyncio
import json
import uuid
from typing import Any

import kubernetes_validate
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities import schema_tools
from prefect.utilities.templating import find_placeholders
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from tests.conftest import ROOT

TEMPLATE = json.loads((ROOT / "deployments/kubernetes/base-job-template.json").read_text())
ADDED = {"gpu_count", "node_selector", "tolerations", "output_pvc", "shm_size", "tracking_uri"}
K8S_VERSION = "1.33"
POINT = {
    "gpu_count": 8,
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "image": "registry.example/scaling:1",
    "tracking_uri": "http://mlflow.internal:5000",
    "output_pvc": "sweeps",
    "env": {"SCALING_POINT": "t1-lr3e-3"},
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def render(values: dict[str, Any]) -> tuple[dict[str, Any], FlowRun]:
    """The Job the worker would submit for a flow run with these job variables."""
    # Given a client, Prefect calls the API only for {{ prefect.blocks/variables }} placeholders, and this template has
    # none; with no client and no PREFECT_API_URL it would start an ephemeral server. Port 9 refuses: such a placeholder
    # added later fails loudly.
    client = PrefectClient("http://127.0.0.1:9/api")
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(TEMPLATE, values, client=client))
    flow_run = FlowRun(name="brave-point", flow_id=uuid.uuid4())
    config.prepare_for_flow_run(flow_run=flow_run)
    return config.job_manifest, flow_run


def validate_job(manifest: dict[str, Any]) -> None:
    # Non-strict: Prefect requires completions/parallelism in the pod spec, where strict mode rejects extra keys.
    assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=False) == K8S_VERSION


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e.get("value") for e in container["env"]}


def assert_volumes(spec: dict[str, Any], claim: str, shm: str) -> None:
    """/outputs on the claim and a memory-backed /dev/shm, each mount naming a declared volume."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    # The schema does not cross-check names: a mount of an undeclared volume validates, then fails at pod creation.
    assert set(mounts.values()) <= set(volumes), (mounts, sorted(volumes))
    assert volumes[mounts["/outputs"]]["persistentVolumeClaim"] == {"claimName": claim}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}


def test_point_renders_a_valid_gpu_job():
    manifest, flow_run = render(POINT)
    validate_job(manifest)
    spec = pod_spec(manifest)
    (container,) = spec["containers"]

    # The schema takes any int-or-string quantity ("four" passes), so the type is checked here.
    for kind in ("limits", "requests"):
        gpus = container["resources"][kind]["nvidia.com/gpu"]
        assert type(gpus) is int and gpus == 8, (kind, gpus)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [GPU_TOLERATION]
    assert_volumes(spec, claim="sweeps", shm="16Gi")
    assert container["image"] == "registry.example/scaling:1"

    env = env_of(container)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert env["SCALING_OUTPUT"] == "/outputs"
    # Prefect's own merge still works: the job variable's env and the worker's flow-run id reach the container.
    assert env["SCALING_POINT"] == "t1-lr3e-3"
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert manifest["spec"]["template"]["metadata"]["labels"]["prefect.io/flow-run-id"] == str(flow_run.id)


def test_defaults_render_a_valid_one_gpu_job():
    manifest, _ = render({})
    validate_job(manifest)
    spec = pod_spec(manifest)
    (container,) = spec["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert spec["tolerations"] == [GPU_TOLERATION]
    assert spec["nodeSelector"] == {}
    assert_volumes(spec, claim="scaling-outputs", shm="16Gi")
    assert container["image"] == TEMPLATE["variables"]["properties"]["image"]["default"]


def test_job_variable_env_overrides_the_template_env():
    manifest, _ = render({"env": {"MLFLOW_TRACKING_URI": "http://other:5000"}})
    assert env_of(pod_spec(manifest)["containers"][0])["MLFLOW_TRACKING_URI"] == "http://other:5000"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"tolerations": GPU_TOLERATION}, id="toleration-not-in-a-list"),
        pytest.param({"node_selector": {"nvidia.com/gpu.count": 8}}, id="node-label-not-a-string"),
    ],
)
def test_validation_rejects_a_broken_job(bad):
    """The Job check can fail: the API refuses these job variables, but not the same mistake written in the template."""
    manifest, _ = render({**POINT, **bad})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=False)


def test_template_keeps_prefect_variables_and_uses_every_added_one():
    declared = set(TEMPLATE["variables"]["properties"])
    prefect_own = set(KubernetesWorker.get_default_base_job_template()["variables"]["properties"])
    assert prefect_own <= declared, prefect_own - declared
    assert declared - prefect_own == ADDED
    referenced = {p.name for p in find_placeholders(json.dumps(TEMPLATE["job_configuration"]))}
    assert ADDED <= referenced, f"declared but never used: {ADDED - referenced}"


def test_api_accepts_the_template_and_checks_job_variables():
    """The checks the Prefect API makes on `work-pool create` and on each run's job variables."""
    # An undeclared placeholder would otherwise render to nothing and drop its key.
    validate_base_job_template(TEMPLATE)
    schema = TEMPLATE["variables"]
    schema_tools.is_valid_schema(schema, preprocess=False)
    defaults = {k: v["default"] for k, v in schema["properties"].items() if v.get("default") is not None}
    for job_variables in (defaults, {**defaults, **POINT}):
        schema_tools.validate(job_variables, schema, raise_on_error=True, ignore_required=True)
    for bad in ({"gpu_count": -1}, {"gpu_count": "8"}):
        with pytest.raises(schema_tools.ValidationError):
            schema_tools.validate({**defaults, **bad}, schema, raise_on_error=True, ignore_required=True)


def test_a_sweeps_runs_render_as_pods_with_their_own_gpus(tmp_path):
    from tasks.cluster.kubernetes import job_variables
    from tasks.config import load_sweep
    from tasks.plan import plan_sweep
    from tests.conftest import tiny_sweep

    sets = {
        "resources.executor": "kubernetes",
        "resources.ranks_per_run": 2,
        "cluster.kubernetes.job_variables": {"image": "registry.example/scaling:2", "output_pvc": "lab"},
    }
    cfg = load_sweep(tiny_sweep(tmp_path), sets)
    (spec, *_) = plan_sweep(cfg).runs
    manifest, _ = render(job_variables(spec, cfg))
    validate_job(manifest)
    container = pod_spec(manifest)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2 and container["image"].endswith("scaling:2")
    assert_volumes(pod_spec(manifest), claim="lab", shm="16Gi")
