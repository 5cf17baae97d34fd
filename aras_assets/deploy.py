"""Where the platform runs: one switch, `ARAS_DEPLOY`, chooses the Dagster instance, the MLflow
store, the executor and the resources that differ between deployments.

- `local` (default): the embedded instance of `dagster.yaml` (sqlite under DAGSTER_HOME) and
  MLflow in sqlite under the data root. One machine.
- `postgres`: Dagster's run, event-log and schedule storage on PostgreSQL
  (`deploy/postgres/dagster.yaml`, URL in `ARAS_DAGSTER_PG_URL`) and MLflow's backend store
  on PostgreSQL (`ARAS_MLFLOW_TRACKING_URI`), so many runs write at once; sqlite locks under
  concurrent writers.
- `k8s`: the same stores, runs launched as Kubernetes jobs and each step in its own pod
  (`deploy/k8s/`); GPU steps request a GPU through their `dagster-k8s/config` tag, and the
  captioner's `openai` backend talks to the vLLM server at `ARAS_CAPTIONER_ENDPOINT`.

`aras` commands, `aras ui` and the definitions `dagster dev` loads all read this module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aras_assets.errors import BadInputError

DEPLOY_ENV = "ARAS_DEPLOY"
DEPLOYMENTS = ("local", "postgres", "k8s")
DAGSTER_PG_URL_ENV = "ARAS_DAGSTER_PG_URL"  # read by deploy/*/dagster.yaml (`env:`), checked here
MLFLOW_URI_ENV = "ARAS_MLFLOW_TRACKING_URI"
CAPTIONER_ENDPOINT_ENV = "ARAS_CAPTIONER_ENDPOINT"

# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the driver installed is psycopg2, so
# both URLs name it (Dagster's storage and MLflow's store build their engines from the URL).
PG_SCHEME = "postgresql+psycopg2"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
INSTANCE_CONFIGS = {"local": PROJECT_ROOT / "dagster.yaml", "postgres": DEPLOY_DIR / "postgres" / "dagster.yaml",
                    "k8s": DEPLOY_DIR / "k8s" / "dagster.yaml"}

# Assets in this concurrency pool run on a GPU. On Kubernetes each such step gets its own pod
# that asks for one GPU (the k8s_job_executor reads the tag); elsewhere the tag is inert.
GPU_POOL = "gpu"
GPU_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {"resources": {"requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"},
                                       "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"node_selector": {"nvidia.com/gpu.present": "true"},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}
GPU_OP_TAGS: dict[str, Any] = {"dagster-k8s/config": GPU_STEP_K8S_CONFIG}


def current() -> str:
    """The deployment named by ARAS_DEPLOY (default local); anything else is a one-line error."""
    name = os.environ.get(DEPLOY_ENV, "").strip() or "local"
    if name not in DEPLOYMENTS:
        raise BadInputError(f"{DEPLOY_ENV}={name!r} is not a deployment; use one of {', '.join(DEPLOYMENTS)}")
    return name


def uses_postgres(name: str | None = None) -> bool:
    return (name or current()) != "local"


def instance_config(name: str | None = None) -> Path:
    """The dagster.yaml of the deployment, linked into DAGSTER_HOME by `ensure_dagster_home`."""
    return INSTANCE_CONFIGS[name or current()]


def _required(variable: str, example: str, name: str) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        raise BadInputError(f"{DEPLOY_ENV}={name} needs {variable} (e.g. {example})")
    return value


def dagster_pg_url(name: str | None = None) -> str:
    name = name or current()
    return _required(DAGSTER_PG_URL_ENV, f"{PG_SCHEME}://aras:PASSWORD@db.internal:5432/dagster", name)


def mlflow_tracking_uri(name: str | None = None) -> str | None:
    """MLflow's backend store for the deployment; None: the local default (sqlite under the data root)."""
    name = name or current()
    if not uses_postgres(name):
        return None
    return _required(MLFLOW_URI_ENV, f"{PG_SCHEME}://aras:PASSWORD@db.internal:5432/mlflow", name)


def where(url: str) -> str:
    """host:port of a database URL, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def redacted(url: str) -> str:
    """A URL fit to print: its password replaced."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def check_database(url: str, variable: str, timeout_s: int = 5) -> None:
    """Connect once: a server that is down or refuses is one line naming host, port and variable."""
    import psycopg2

    scheme = urlsplit(url).scheme
    if scheme != PG_SCHEME:
        found = f"{scheme}://" if scheme else "no scheme"
        raise BadInputError(f"{variable} must be {PG_SCHEME}://USER:PASSWORD@HOST:PORT/DATABASE (the PostgreSQL "
                            f"driver installed), not {found}")
    try:
        psycopg2.connect(url.replace(f"{PG_SCHEME}://", "postgresql://", 1), connect_timeout=timeout_s).close()
    except psycopg2.Error as exc:
        reason = (str(exc).strip().splitlines() or ["no answer"])[0]
        raise BadInputError(f"PostgreSQL at {where(url)} ({variable}) is unreachable or refused the connection: "
                            f"{reason}") from None


def check_ready(name: str | None = None) -> None:
    """Before an `aras` command opens the instance: the deployment's variables are set and its
    databases answer."""
    name = name or current()
    if not uses_postgres(name):
        return
    check_database(dagster_pg_url(name), DAGSTER_PG_URL_ENV)
    uri = mlflow_tracking_uri(name)
    if uri and uri.startswith("postgres"):  # another store (an MLflow server's http://) is MLflow's to check
        check_database(uri, MLFLOW_URI_ENV)


def resources(name: str | None = None) -> dict[str, object]:
    """The resources of the deployment: the local set, with the captioner's endpoint from the
    environment on Kubernetes (the vLLM Service; `caption_backends` says which models use it)."""
    import dagster as dg

    from aras_assets.resources_config import default_resources
    from resources.captioner import CaptionerResource

    found = default_resources()
    if (name or current()) == "k8s":
        found["captioner"] = CaptionerResource(endpoint=dg.EnvVar(CAPTIONER_ENDPOINT_ENV))
    return found


def executor(name: str | None = None) -> Any:
    """The executor of every job: each step in its own Kubernetes job on k8s; elsewhere the
    steps of a run in the run's process, one after another, since a process per step would
    import the definitions (torch and all, seconds) again for every step. Parallelism comes
    from runs: the queue runs several at once."""
    if (name or current()) == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    import dagster as dg

    return dg.in_process_executor
