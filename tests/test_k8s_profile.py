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
from aras_assets.settings import SettingsResource
from resources.captioner import CaptionerResource

K8S = deploy.DEPLOY_DIR / "k8s"
# The oldest Kubernetes minor still in common support that every field here exists in.
K8S_VERSION = "1.30"
HELM_VALUES = K8S / "helm-values.yaml"


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
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "dagster.yaml", "workspace.yaml",
                                                            HELM_VALUES.name}
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
    for section in ("run_retries", "run_monitoring", "telemetry", "run_coordinator"):
        assert configs["postgres"][section] == configs["k8s"][section] == configs["local"][section], section
    for name in ("postgres", "k8s"):
        assert configs[name]["storage"] == {"postgres": {"postgres_url": {"env": deploy.DAGSTER_PG_URL_ENV}}}


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def validated(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_helm_values_are_the_manifests_deployment() -> None:
    """The official chart's values give the instance, the run launcher and the code server that
    deploy/k8s/dagster.yaml and user-code.yaml give, and what they hand to Kubernetes validates."""
    values = yaml.safe_load(HELM_VALUES.read_text())
    instance = yaml.safe_load((K8S / "dagster.yaml").read_text())
    # the instance: storage on the external Postgres, the queue, the limits, retries and monitoring
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert daemon["runCoordinator"]["config"]["queuedRunCoordinator"] == {
        _camel(k): v for k, v in instance["run_coordinator"]["config"].items()}
    for section in ("run_retries", "run_monitoring"):
        assert daemon[_camel(section)] == {_camel(k): v for k, v in instance[section].items()}, section
    runs, pools = instance["concurrency"]["runs"], instance["concurrency"]["pools"]
    assert values["concurrency"] == {"enabled": True, "pools": {"defaultLimit": pools["default_limit"]}, "runs": {
        "maxConcurrentRuns": runs["max_concurrent_runs"], "tagConcurrencyLimits": runs["tag_concurrency_limits"]}}
    assert values["telemetry"] == instance["telemetry"]
    # the run launcher: the same settings, secrets and data volume as deploy/k8s/dagster.yaml's
    launcher, ours = values["runLauncher"]["config"]["k8sRunLauncher"], launcher_config()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert [m["name"] for m in launcher["envConfigMaps"]] == ours["env_config_maps"]
    assert [s["name"] for s in launcher["envSecrets"]] == ours["env_secrets"]
    assert launcher["volumeMounts"] == ours["volume_mounts"] and launcher["volumes"] == ours["volumes"]
    # the code server: user-code.yaml's image, module, port, resources, settings and data volume
    (code,) = values["dagster-user-deployments"]["deployments"]
    box = container("aras-user-code")
    assert f"{code['image']['repository']}:{code['image']['tag']}" == box["image"]
    assert box["command"][-2:] == code["dagsterApiGrpcArgs"]
    assert code["port"] == int(box["command"][box["command"].index("-p") + 1])
    assert code["resources"] == box["resources"] and code["includeConfigInLaunchedRuns"] == {"enabled": True}
    env_from = [{"configMapRef": m} for m in code["envConfigMaps"]] + [{"secretRef": s} for s in code["envSecrets"]]
    assert env_from == box["envFrom"]
    data_mounts = [m for m in box["volumeMounts"] if m["name"] == "data"]
    assert code["volumeMounts"] == data_mounts  # the chart mounts the instance itself
    # what the chart puts in pods validates: the code server's and a run's
    for name, spec in (("aras-user-code", code), ("aras-run", launcher)):
        validated({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "aras"}, "spec": {
            "containers": [{"name": "dagster", "image": box["image"], "resources": spec.get("resources", {}),
                            "envFrom": [{"configMapRef": m} for m in spec["envConfigMaps"]]
                            + [{"secretRef": s} for s in spec["envSecrets"]],
                            "volumeMounts": spec["volumeMounts"]}],
            "volumes": spec["volumes"]}})
    # its claim and ConfigMap are the manifests' own
    claims = {v["persistentVolumeClaim"]["claimName"] for v in launcher["volumes"]}
    assert all(find("PersistentVolumeClaim", c) for c in claims) and find("ConfigMap", "aras-env")


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


def test_every_caption_model_goes_to_its_own_vllm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """aras.env sends each of the caption plan's three models to the openai backend at its own
    vLLM Service, whose Deployment serves that model's caption_models entry on one GPU; the
    caption stage's clients (built as the stage builds them, resources from the k8s deployment)
    talk to those servers."""
    from urllib.parse import urlsplit

    from aras_assets.captions.assets import caption_job
    from aras_assets.settings import load_settings

    env = env_file("aras.env")
    for name in ("ARAS_CAPTION_BACKENDS", "ARAS_CAPTION_ENDPOINTS", deploy.CAPTIONER_ENDPOINT_ENV):
        monkeypatch.setenv(name, env[name])
    settings = load_settings("paper")
    planned = {pair.split(":", 1)[1] for pair in settings.caption_plan}
    assert planned == set(settings.caption_models) and len(planned) == 3
    assert settings.caption_backends == dict.fromkeys(planned, "openai")
    for model in planned:
        endpoint = urlsplit(settings.caption_endpoints[model])
        service = find("Service", endpoint.hostname)
        assert service["spec"]["ports"][0]["port"] == endpoint.port, model
        server = next(d for d in resources() if d["kind"] == "Deployment"
                      and d["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"])
        vllm = server["spec"]["template"]["spec"]["containers"][0]
        assert vllm["command"] == ["vllm", "serve"] and vllm["args"][0] == settings.caption_models[model], model
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1", model
        # a text-only model refuses vLLM's image limit; the vision models take one image per prompt
        assert any(a.startswith("--limit-mm-per-prompt") for a in vllm["args"]) == (model != "Qwen3-4B"), model
    served_by_manifests = {container(d["metadata"]["name"])["args"][0] for d in resources()
                           if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("aras-vllm-")}
    assert served_by_manifests == set(settings.caption_models.values())

    @dg.asset
    def clients_seen(settings: SettingsResource, captioner: CaptionerResource) -> dict[str, tuple[str, str]]:
        job = caption_job(settings, captioner)
        return {pair.name: (job.client_for(pair).base_url, job.client_for(pair).model) for pair in job.pairs}

    result = dg.materialize([clients_seen], resources={"captioner": deploy.resources("k8s")["captioner"],
                                                       "settings": SettingsResource(profile="paper")})
    seen = result.output_for_node("clients_seen")
    assert len(seen) == len(settings.caption_plan)
    for pair, (url, served) in seen.items():
        model = pair.split(":", 1)[1]
        assert url.rstrip("/") == settings.caption_endpoints[model].rstrip("/") and served == settings.caption_models[model]


def test_k8s_definitions_run_each_step_in_its_own_pod() -> None:
    from dagster_k8s import k8s_job_executor

    from aras_assets.graph import ASSETS, JOBS

    assert deploy.executor("k8s") is k8s_job_executor
    assert deploy.executor("local") is deploy.executor("postgres") is dg.in_process_executor
    defs = dg.Definitions(assets=ASSETS, jobs=JOBS, executor=deploy.executor("k8s"), resources=deploy.resources("k8s"))
    assert defs.resolve_job_def(JOBS[0].name).executor_def.name == k8s_job_executor.name
