"""The Kubernetes deployment without a cluster: every manifest of deploy/k8s (and the ConfigMaps
kustomize generates) validates offline against the Kubernetes schemas, every GPU asset carries
its `dagster-k8s/config` tag, and the pod that dagster-k8s builds for a GPU step (through its own
job-construction functions) has the GPU limit, the image, the environment and the data volume
(its instance config travels in the step's arguments, as dagster-k8s passes it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes_validate
import pytest
import yaml

from aras_assets import deploy
from resources.captioner import CaptionerResource

K8S = deploy.DEPLOY_DIR / "k8s"
# The oldest Kubernetes minor still in common support that every field here exists in.
K8S_VERSION = "1.30"


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def env_file(name: str) -> dict[str, str]:
    lines = (K8S / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def generated_config_maps() -> list[dict[str, Any]]:
    """The ConfigMaps of kustomization.yaml's configMapGenerator, as kustomize writes them."""
    found = []
    for gen in kustomization()["configMapGenerator"]:
        data = {f: (K8S / f).read_text() for f in gen.get("files", [])}
        for name in gen.get("envs", []):
            data |= env_file(name)
        found.append({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": gen["name"], "namespace": kustomization()["namespace"]}, "data": data})
    return found


def resources() -> list[dict[str, Any]]:
    docs = [d for f in kustomization()["resources"] for d in load_docs(K8S / f)]
    return docs + generated_config_maps()


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name)


def container(deployment: str) -> dict[str, Any]:
    return find("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def launcher_config() -> dict[str, Any]:
    instance = yaml.safe_load((K8S / "dagster.yaml").read_text())
    assert instance["run_launcher"]["class"] == "K8sRunLauncher"
    return instance["run_launcher"]["config"]


def test_every_manifest_validates_offline() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "dagster.yaml", "workspace.yaml"}
    assert listed == on_disk, "a manifest in deploy/k8s that kustomization.yaml does not apply (or the reverse)"
    docs = resources()
    assert {d["kind"] for d in docs} >= {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                                         "PersistentVolumeClaim", "ConfigMap"}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_wiring_between_manifests_holds() -> None:
    namespace = kustomization()["namespace"]
    assert all(d["metadata"].get("namespace", namespace) == namespace for d in resources() if d["kind"] != "Namespace")
    config = launcher_config()
    assert config["job_namespace"] == namespace
    assert config["instance_config_map"] == "aras-instance" and find("ConfigMap", "aras-instance")
    assert config["service_account_name"] == find("ServiceAccount", "aras")["metadata"]["name"]
    assert all(find("ConfigMap", name) for name in config["env_config_maps"])
    claims = {v["persistentVolumeClaim"]["claimName"] for v in config["volumes"] if "persistentVolumeClaim" in v}
    assert all(find("PersistentVolumeClaim", c) for c in claims)
    env = env_file("aras.env")
    assert env["ARAS_DEPLOY"] == "k8s" and env["DAGSTER_HOME"] == config["dagster_home"]
    assert {m["mountPath"] for m in config["volume_mounts"]} == {env["ARAS_DATA_ROOT"]}
    # runs and steps start in the user code's image: the code server says which one
    user_code = container("aras-user-code")
    current = {e["name"]: e.get("value") for e in user_code["env"]}["DAGSTER_CURRENT_IMAGE"]
    assert current == user_code["image"]
    # the webserver and daemon find the code server through the workspace
    grpc = yaml.safe_load((K8S / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    service = find("Service", grpc["host"])
    assert service["spec"]["ports"][0]["port"] == grpc["port"] == int(user_code["command"][user_code["command"].index("-p") + 1])
    # the Dagster images match the pinned dagster
    import dagster

    for name in ("aras-webserver", "aras-daemon"):
        assert container(name)["image"].endswith(f":{dagster.__version__}"), name


def test_instance_configs_share_what_is_not_about_scale() -> None:
    configs = {name: yaml.safe_load(path.read_text()) for name, path in deploy.INSTANCE_CONFIGS.items()}
    for section in ("run_retries", "run_monitoring", "telemetry"):
        assert configs["postgres"][section] == configs["k8s"][section] == configs["local"][section], section
    for name in ("postgres", "k8s"):
        assert configs[name]["storage"] == {"postgres": {"postgres_url": {"env": deploy.DAGSTER_PG_URL_ENV}}}


def test_the_run_launcher_config_is_dagster_k8s_own(tmp_path: Path) -> None:
    """K8sRunLauncher takes the config as written (a kubeconfig file stands in for the cluster)."""
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    config = {**launcher_config(), "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    launcher = K8sRunLauncher(**config)
    assert launcher.instance_config_map == "aras-instance" and launcher.job_namespace == "aras"


def gpu_assets_missing_k8s_tags(assets: list[dg.AssetsDefinition]) -> list[str]:
    """GPU assets (pool `gpu`) whose step would not ask Kubernetes for a GPU."""
    missing = []
    for a in assets:
        if a.op.pool != deploy.GPU_POOL:
            continue
        tag = a.op.tags.get("dagster-k8s/config")
        config = json.loads(tag) if isinstance(tag, str) else tag or {}
        limits = config.get("container_config", {}).get("resources", {}).get("limits", {})
        if "nvidia.com/gpu" not in limits:
            missing.append(", ".join(k.to_user_string() for k in a.keys))
    return missing


def test_every_gpu_asset_asks_kubernetes_for_a_gpu() -> None:
    from aras_assets.graph import ASSETS

    gpu = [a for a in ASSETS if a.op.pool == deploy.GPU_POOL]
    assert len(gpu) >= 8
    assert gpu_assets_missing_k8s_tags(list(ASSETS)) == []

    @dg.asset(pool=deploy.GPU_POOL)
    def untagged_gpu_step() -> None: ...

    assert gpu_assets_missing_k8s_tags([untagged_gpu_step]) == ["untagged_gpu_step"]


def test_gpu_step_pod_built_by_dagster_k8s() -> None:
    """The Kubernetes job the k8s_job_executor would launch for a GPU step, built with
    dagster-k8s's own functions from our launcher config and the step's tags."""
    from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
    from dagster_k8s.job import get_user_defined_k8s_config
    from kubernetes.client import ApiClient

    from aras_assets.graph import ASSETS

    step = next(a for a in ASSETS if dg.AssetKey("segmentation_model") in a.keys)
    tags = {k: v if isinstance(v, str) else json.dumps(v) for k, v in step.op.tags.items()}
    image = container("aras-user-code")["image"]
    keys = set(DagsterK8sJobConfig._fields) & set(launcher_config())
    job_config = DagsterK8sJobConfig(job_image=image, **{k: launcher_config()[k] for k in keys})
    job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "dagster-step-segmentation-model",
                                    user_defined_k8s_config=get_user_defined_k8s_config(tags), component="step_worker")
    manifest = ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    box = pod["containers"][0]
    assert box["image"] == image
    assert box["resources"]["limits"]["nvidia.com/gpu"] == "1" and box["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"aras-env"} <= {e["configMapRef"]["name"] for e in box["envFrom"] if "configMapRef" in e}
    assert {"aras-postgres"} <= {e["secretRef"]["name"] for e in box["envFrom"] if "secretRef" in e}
    assert {m["mountPath"] for m in box["volumeMounts"]} == {env_file("aras.env")["ARAS_DATA_ROOT"]}
    assert {"name": "DAGSTER_HOME", "value": launcher_config()["dagster_home"]} in box["env"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["serviceAccountName"] == "aras"


def test_captions_go_to_the_vllm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """aras.env points the captioner's openai backend at the vLLM Service, and sends it the
    caption-plan model that the server serves."""
    from urllib.parse import urlsplit

    from aras_assets.settings import load_settings

    env = env_file("aras.env")
    endpoint = urlsplit(env[deploy.CAPTIONER_ENDPOINT_ENV])
    service = find("Service", endpoint.hostname)
    assert service["spec"]["selector"] == {"app": "aras-vllm"} and service["spec"]["ports"][0]["port"] == endpoint.port
    vllm = container("aras-vllm")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    served = vllm["args"][0]
    monkeypatch.setenv("ARAS_CAPTION_BACKENDS", env["ARAS_CAPTION_BACKENDS"])
    settings = load_settings("demo")
    routed = [m for m, backend in settings.caption_backends.items() if backend == "openai"]
    assert routed and all(settings.caption_models[m] == served for m in routed)
    assert any(pair.endswith(f":{m}") for pair in settings.caption_plan for m in routed)
    # the k8s resources read the endpoint from the environment when a run starts
    monkeypatch.setenv(deploy.CAPTIONER_ENDPOINT_ENV, env[deploy.CAPTIONER_ENDPOINT_ENV])
    captioner = deploy.resources("k8s")["captioner"]

    @dg.asset
    def endpoint_seen(captioner: CaptionerResource) -> str:
        return captioner.client("openai", served).base_url

    result = dg.materialize([endpoint_seen], resources={"captioner": captioner})
    assert result.output_for_node("endpoint_seen").rstrip("/") == env[deploy.CAPTIONER_ENDPOINT_ENV].rstrip("/")


def test_k8s_definitions_run_each_step_in_its_own_pod() -> None:
    from dagster_k8s import k8s_job_executor

    from aras_assets.graph import ASSETS, JOBS

    assert deploy.executor("k8s") is k8s_job_executor and deploy.executor("local") is None
    defs = dg.Definitions(assets=ASSETS, jobs=JOBS, executor=deploy.executor("k8s"), resources=deploy.resources("k8s"))
    assert defs.resolve_job_def(JOBS[0].name).executor_def.name == k8s_job_executor.name
