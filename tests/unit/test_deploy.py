"""Static checks of deploy/: real tools (promtool, hadolint, kustomize, schemas) and one source of
truth for every worker setting, port, deadline and metric name."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.fields import FieldInfo

from deploy import check, constraints, demo, healthcheck, settings_doc
from producer.contracts import Verdict, utcnow
from worker.settings import WorkerSettings

ROOT = check.ROOT
K8S = check.K8S
IN_CI = os.environ.get("CI") == "true"
FIELDS: dict[str, FieldInfo] = WorkerSettings.model_fields


def default(name: str) -> Any:
    return settings_doc.default_value(FIELDS[name])


def call_tool(function: Callable[[], Any]) -> Any:
    """Run something that needs an external tool; a missing tool skips, or fails under CI."""
    try:
        return function()
    except check.ToolMissingError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def worker_env() -> dict[str, str]:
    pairs = {}
    for line in (K8S / "worker.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def dockerfile_env(path: Path) -> dict[str, str]:
    return dict(re.findall(r"\b(DFD_[A-Z0-9_]+)=(\S+)", path.read_text()))


def compose() -> dict[str, Any]:
    return load_yaml(check.COMPOSE)


def seconds(duration: str) -> float:
    value = re.fullmatch(r"(\d+)s", duration)
    assert value, f"expected a duration like 60s, got {duration!r}"
    return float(value.group(1))


@pytest.mark.parametrize("run_check", check.CHECKS, ids=lambda f: f.__name__)
def test_real_tool_check_passes(run_check: Callable[[], check.CheckResult]) -> None:
    result = call_tool(run_check)
    assert result.ok, f"{result.name} failed:\n{result.detail}"


def test_kustomize_renders_every_resource_once() -> None:
    docs = call_tool(check.render_k8s)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "PodMonitor",
        "ScaledObject",
        "TriggerAuthentication",
    ]
    assert all(
        doc["metadata"].get("namespace") == "dfd" for doc in docs if doc["kind"] != "Namespace"
    )


def test_scaler_bootstrap_servers_come_from_worker_env() -> None:
    [scaled] = [doc for doc in call_tool(check.render_k8s) if doc["kind"] == "ScaledObject"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["metadata"]["bootstrapServers"] == worker_env()["DFD_BOOTSTRAP_SERVERS"]


def scaled_object() -> dict[str, Any]:
    return load_yaml(K8S / "scaledobject.yaml")


def deployment() -> dict[str, Any]:
    return load_yaml(K8S / "deployment.yaml")


def test_crd_validation_rejects_unknown_and_mistyped_fields() -> None:
    good = scaled_object()
    assert check.validate_object(good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["maxReplicaCont"] = typo["spec"].pop("maxReplicaCount")
    assert any("maxReplicaCont" in problem for problem in check.validate_object(typo))
    mistyped = copy.deepcopy(good)
    mistyped["spec"]["maxReplicaCount"] = "twelve"
    assert check.validate_object(mistyped)


def test_kubernetes_validation_rejects_a_broken_deployment() -> None:
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/x"
    assert check.validate_object(broken)
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    assert any("no schema" in problem for problem in check.validate_object(unknown))


def test_keda_trigger_names_the_workers_group_and_topic() -> None:
    env = worker_env()

    def effective(name: str) -> Any:
        return env.get(settings_doc.env_name(name), default(name))

    spec = scaled_object()["spec"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == effective("group_id")
    assert trigger["metadata"]["topic"] == effective("requests_topic")
    assert trigger["metadata"]["offsetResetPolicy"] == effective("auto_offset_reset")
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["scaleTargetRef"]["name"] == deployment()["metadata"]["name"]


def test_partition_count_is_written_only_in_the_scaled_object() -> None:
    mentions = [
        path.relative_to(ROOT)
        for path in (ROOT / "deploy").rglob("*.yaml")
        if "crds" not in path.parts and "maxReplicaCount:" in path.read_text()
    ]
    assert mentions == [Path("deploy/k8s/scaledobject.yaml")]


def test_worker_deployment_requests_one_gpu_and_probes_both_endpoints() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "replicas" not in deployment()["spec"], "KEDA owns the replica count"
    assert {
        ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]
    } == {
        "dfd-worker",
        "dfd-worker-secrets",
    }


def test_grace_periods_exceed_the_drain_deadline() -> None:
    drain = default("drain_deadline_s")
    assert deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    assert seconds(compose()["services"]["worker"]["stop_grace_period"]) > drain


def test_metrics_port_everywhere_is_the_workers_default() -> None:
    port = default("metrics_port")
    for path in check.DOCKERFILES:
        assert re.findall(r"^EXPOSE (\d+)$", path.read_text(), re.M) == [str(port)], path
    [container] = deployment()["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    [job] = load_yaml(check.PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["dns_sd_configs"][0]["port"] == port


def dfd_assignments() -> list[tuple[str, str, str]]:
    found = [("deploy/k8s/worker.env", name, value) for name, value in worker_env().items()]
    for path in check.DOCKERFILES:
        found += [(path.name, name, value) for name, value in dockerfile_env(path).items()]
    for service, body in compose()["services"].items():
        environment = body.get("environment", {})
        found += [
            (f"compose {service}", k, str(v))
            for k, v in environment.items()
            if k.startswith("DFD_")
        ]
    return found


def test_deploy_sets_only_known_settings_and_never_their_defaults() -> None:
    assignments = dfd_assignments()
    assert assignments
    for source, env, value in assignments:
        if env.startswith("DFD_KAFKA__"):
            continue
        name = env.removeprefix("DFD_").lower()
        assert name in FIELDS, f"{source}: {env} is no worker setting"
        parsed = WorkerSettings(**{"checkpoint": Path("/x"), name: value})
        if not FIELDS[name].is_required():
            assert getattr(parsed, name) != default(name), f"{source}: {env} repeats the default"


def test_compose_worker_scales_and_prometheus_finds_every_replica() -> None:
    services = compose()["services"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert services["producer-example"]["profiles"] == ["example"]
    assert services["topics"]["entrypoint"] == ["python", "-m", "producer"]
    assert services["topics"]["command"][0] == "topics"
    [job] = load_yaml(check.PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["job_name"] == "dfd-worker"
    assert job["dns_sd_configs"][0]["names"] == ["worker"]


def test_images_start_the_worker_like_the_readme_says() -> None:
    assert "python -m worker" in (ROOT / "README.md").read_text()
    for path in check.DOCKERFILES:
        text = path.read_text()
        assert re.findall(r"^ENTRYPOINT (.+)$", text, re.M) == ['["python", "-m", "worker"]']
        assert re.search(r"^USER 10001$", text, re.M), f"{path.name} must not run as root"
        assert "HEALTHCHECK" in text and "deploy.healthcheck" in text
        assert "PIP_CONSTRAINT=/src/deploy/docker/constraints-worker.txt" in text


def test_healthcheck_targets_the_configured_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFD_METRICS_PORT", raising=False)
    assert healthcheck.healthz_url() == f"http://127.0.0.1:{default('metrics_port')}/healthz"
    monkeypatch.setenv("DFD_METRICS_PORT", "9311")
    assert healthcheck.healthz_url() == "http://127.0.0.1:9311/healthz"


def test_healthcheck_imports_only_the_standard_library() -> None:
    """The HEALTHCHECK runs every 30 s: it must not load the worker's settings or Kafka client."""
    assert settings_doc.env_name("metrics_port") == healthcheck.PORT_ENV
    code = (
        "import sys, deploy.healthcheck; "
        "heavy = {'worker', 'pydantic', 'confluent_kafka'} & set(sys.modules); "
        "sys.exit(sorted(heavy) or 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_constraints_pin_every_worker_dependency() -> None:
    needed = set(constraints.closure())
    assert {"torch", "av", "confluent-kafka", "prometheus-client"} <= needed
    assert not needed - set(constraints.read_pins()), "run python -m deploy.constraints --write"


def test_operations_settings_table_matches_worker_settings() -> None:
    current = settings_doc.OPERATIONS_MD.read_text()
    assert settings_doc.splice(current, settings_doc.settings_table()) == current, (
        "OPERATIONS.md drifted: run python -m deploy.settings_doc --write"
    )
    for name in FIELDS:
        assert f"`{settings_doc.env_name(name)}`" in current


def test_every_alert_has_a_runbook_entry_and_severity() -> None:
    operations = settings_doc.OPERATIONS_MD.read_text()
    rules = check.alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "DfdWorkerDown",
        "DfdConsumerLagGrowing",
        "DfdErrorVerdictRatioHigh",
        "DfdDeadLetterRate",
        "DfdCacheErrors",
        "DfdLatencyP95High",
        "DfdWorkerNotReady",
    }
    for rule in rules:
        assert f"\n### {rule['alert']}\n" in operations
        assert rule["annotations"]["runbook"] == f"OPERATIONS.md#{rule['alert'].lower()}"
        assert rule["labels"]["severity"] in {"warning", "critical"}


def test_metric_names_come_from_alerts_and_every_dashboard_panel() -> None:
    used = check.used_metrics()
    assert "dfd_request_seconds_bucket" in used["alert DfdLatencyP95High"]
    dashboard = used["dashboard dfd-worker.json"]
    assert {"dfd_consumer_lag", "dfd_stage_seconds_bucket", "dfd_gpu_memory_bytes"} <= dashboard
    missing = check.unknown_metrics({"up"})
    assert "dfd_ready" in missing["alert DfdWorkerNotReady"]
    assert "alert DfdWorkerDown" not in missing


def test_dashboard_panels_are_complete() -> None:
    [path] = check.DASHBOARDS
    dashboard = json.loads(path.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("throughput", "latency", "batch", "cache", "lag", "errors", "in flight", "gpu"):
        assert topic in titles
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"])


def test_demo_printout_says_what_the_model_is_good_for() -> None:
    trained_on = {"kind": "synthetic", "name": "synth v1", "intended_use": "demo"}
    model = {"name": "dfd-demo", "version": "demo", "spec_hash": "abc", "trained_on": trained_on}
    verdict = Verdict(
        request_id="r",
        video_uri="file:///v.mp4",
        status="error",
        error={"code": "NOT_A_VIDEO", "message": "x"},
        model=model,
        worker_id="w",
        completed_at=utcnow(),
    )
    line = demo.model_warning(verdict)
    assert "synthetic data (synth v1)" in line and "verdicts on real videos mean nothing" in line
    older = verdict.model_copy(
        update={"model": verdict.model.model_copy(update={"trained_on": None})}
    )
    assert "unrecorded data" in demo.model_warning(older)
