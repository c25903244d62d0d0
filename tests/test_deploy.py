"""The deployment files agree with each other and with the worker.

docker-compose.yml, the Prometheus config and alert rules, the Grafana provisioning and
dashboard, and deploy/kafka/create-topics.sh are read as data: every service can be built or
pulled, the worker gets its settings, Prometheus scrapes the worker's /metrics, every file
mounted from ./deploy exists, and every metric the dashboard and the alert rules query is one
the worker exports (``streams.metrics.METRIC_NAMES``). Where the tools are installed,
``docker compose config`` and ``promtool`` check the files too; elsewhere those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tracewatch.json"
GRAFANA_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
GRAFANA_DASHBOARDS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"
CREATE_TOPICS = ROOT / "deploy" / "kafka" / "create-topics.sh"

WORKER_PORT = 6066
DAY_MS = 24 * 3600 * 1000

# Series that Prometheus makes itself for every target; the worker does not export them.
PROMETHEUS_SYNTHETIC = frozenset({"up"})

# What the dashboard must show (the panels the project asked for), as base metric names.
DASHBOARD_MUST_USE = frozenset(
    {
        "tracewatch_messages_total",
        "tracewatch_codes_total",
        "tracewatch_alerts_total",
        "tracewatch_dlq_total",
        "tracewatch_alert_latency_seconds",
        "tracewatch_batch_seconds",
        "tracewatch_ledger_roundtrips_total",
        "tracewatch_consumer_lag",
        "tracewatch_ledger_bytes_per_code",
        "tracewatch_redis_used_memory_bytes",
        "process_resident_memory_bytes",
    }
)

# topic: (partitions, retention.ms) for production (deploy/kafka/create-topics.sh)
TOPICS = {
    "tracewatch.events": (12, 7 * DAY_MS),
    "tracewatch.codes": (12, 1 * DAY_MS),
    "tracewatch.persons": (12, 1 * DAY_MS),
    "tracewatch.alerts": (12, 90 * DAY_MS),
    "tracewatch.events.dlq": (3, 30 * DAY_MS),
}


# --- reading the files ------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return _yaml(PROMETHEUS)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    groups = _yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    """Names the worker exports: streams.metrics.METRIC_NAMES (base names)."""
    from streams.metrics import METRIC_NAMES

    assert METRIC_NAMES, "streams.metrics.METRIC_NAMES is empty"
    return frozenset(METRIC_NAMES)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each of a service's volumes, short or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, target = str(volume).split(":")[:2]
            mounts.append((source, target))
    return mounts


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _host_path(source: str) -> Path:
    return (ROOT / source).resolve()


# --- PromQL: which metrics an expression reads -------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_NAME = re.compile(r"(?<![\w.:$])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "inf", "nan", "offset", "atan2"})
_SERIES_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, labels and keywords left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def _base_name(series: str) -> str:
    for suffix in _SERIES_SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def is_exported(series: str, exported: frozenset[str]) -> bool:
    """A series is exported as itself, or as ``<name>_total|_bucket|_sum|_count`` of one.

    METRIC_NAMES carries no metric types, so a suffix is accepted on any exported name.
    """
    if series in exported or series in PROMETHEUS_SYNTHETIC:
        return True
    base = _base_name(series)
    return base != series and base in {_base_name(name) for name in exported}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (infno, outcome) (rate(tracewatch_messages_total{job=~"$job"}'
            "[$__rate_interval]))",
            {"tracewatch_messages_total"},
        ),
        ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y"}[5m])))', {"a_bucket"}),
        ("sum(rate(a[5m])) by (le) / clamp_min(sum(rate(b[5m])), 1e-3) > bool 0.5", {"a", "b"}),
        ('up{job="tracewatch"} == 0 or tracewatch_worker_up == 0', {"up", "tracewatch_worker_up"}),
        ("x > 0 unless x offset 5m", {"x"}),
        ('absent(up{job="t", a=~"rate(b)"})', {"up"}),
        ("sum(increase(c_total[$__range]))", {"c_total"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


@pytest.mark.parametrize(
    ("series", "ok"),
    [
        ("tracewatch_messages_total", True),
        ("tracewatch_alert_latency_seconds_bucket", True),
        ("tracewatch_alert_latency_seconds_count", True),
        ("tracewatch_consumer_lag", True),
        ("up", True),
        ("tracewatch_consumer_lags", False),
        ("tracewatch_message_total", False),
    ],
)
def test_is_exported(series: str, ok: bool) -> None:
    names = frozenset(
        {"tracewatch_messages", "tracewatch_alert_latency_seconds", "tracewatch_consumer_lag"}
    )
    assert is_exported(series, names) is ok


def _dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _dashboard_panels(panel.get("panels") or [])


def _dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    for panel in _dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets") or []:
            yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        # Grafana's label_values(selector, label): only the selector is PromQL
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
        yield f"variable {variable['name']!r}", match.group(1) if match else text


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_has_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis", "worker", "prometheus", "grafana"} <= set(services)


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: no image and no build"


def test_worker_is_built_from_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    build = services["worker"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (_host_path(context) / dockerfile).is_file()
    assert (_host_path(context) / ".dockerignore").is_file()
    command = services["worker"].get("command")
    assert command in (["worker"], "worker"), command


def test_dockerfile_runs_tracewatch_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}, users
    assert re.search(r'^ENTRYPOINT \["tracewatch"\]', text, re.MULTILINE)


def test_the_image_has_the_jemalloc_the_worker_preloads() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    runtime = text[text.rindex("\nFROM "):]  # the last stage is the image
    assert re.search(r"apt-get install [^\n]*\blibjemalloc2\b", runtime), runtime


def test_dockerignore_keeps_secrets_out_of_the_image() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert {".env", ".git", ".venv"} <= {line.strip() for line in lines}


def test_worker_gets_kafka_redis_and_psn_key(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["worker"])
    assert env["TRACEWATCH_KAFKA"] == "kafka:9092"
    assert env["TRACEWATCH_REDIS_URL"] == "redis://redis:6379/0"
    # required from the caller's environment: compose refuses to start without it
    assert re.fullmatch(r"\$\{TRACEWATCH_PSN_KEY:\?.+\}", env["TRACEWATCH_PSN_KEY"])


def test_worker_settings_are_tracewatch_settings(services: dict[str, dict[str, Any]]) -> None:
    from streams.settings import SETTINGS

    known = {setting.env for setting in SETTINGS}
    env = _environment(services["worker"])
    unknown = {key for key in env if key.startswith("TRACEWATCH_")} - known
    assert not unknown, f"worker environment names no such setting: {sorted(unknown)}"


def test_worker_publishes_its_web_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    port = int(_environment(worker).get("TRACEWATCH_WEB_PORT", WORKER_PORT))
    assert port == WORKER_PORT
    assert port in _container_ports(worker)


def test_worker_waits_for_its_dependencies(services: dict[str, dict[str, Any]]) -> None:
    depends = services["worker"]["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency}: no healthcheck"


def test_redis_keeps_the_ledger(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7.2")
    command = redis["command"]
    words = command if isinstance(command, list) else str(command).split()
    words = [str(word) for word in words]
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    # two or three standing sales stay in a bucket's listpack (deploy/README.md)
    assert int(words[words.index("--hash-max-listpack-value") + 1]) >= 128
    assert any(target == "/data" for _, target in _mounts(redis))


def test_kafka_listens_inside_and_on_the_host(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    image = str(kafka["image"])
    assert image.startswith("apache/kafka:")
    major, minor = (int(part) for part in image.split(":")[1].split(".")[:2])
    assert (major, minor) >= (3, 9)
    advertised = _environment(kafka)["KAFKA_ADVERTISED_LISTENERS"]
    assert "//kafka:9092" in advertised
    host = re.search(r"//localhost:(\d+)", advertised)
    assert host and int(host.group(1)) in _container_ports(kafka)
    assert "broker" in _environment(kafka)["KAFKA_PROCESS_ROLES"]


def test_every_file_mounted_from_deploy_exists(services: dict[str, dict[str, Any]]) -> None:
    mounted = 0
    for name, service in services.items():
        for source, _target in _mounts(service):
            if source.startswith("./deploy"):
                assert _host_path(source).exists(), f"{name} mounts missing {source}"
                mounted += 1
    assert mounted >= 4


# --- Prometheus ---------------------------------------------------------------------------


def test_prometheus_scrapes_the_worker_metrics(
    prometheus: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    job = jobs["tracewatch"]  # the alert rules and the dashboard select job="tracewatch"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for config in job["static_configs"] for t in config["targets"]}
    assert f"worker:{WORKER_PORT}" in targets
    assert WORKER_PORT in _container_ports(services["worker"])


def test_prometheus_gets_its_config_and_rules(
    prometheus: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    mounts = {target: source for source, target in _mounts(services["prometheus"])}
    config_target = "/etc/prometheus/prometheus.yml"
    assert _host_path(mounts[config_target]) == PROMETHEUS
    for rule_file in prometheus["rule_files"]:
        target = str(Path(config_target).parent / rule_file)
        assert target in mounts, f"{rule_file} is not mounted at {target}"
        assert _host_path(mounts[target]) == ALERTS


def test_alert_rules_cover_the_operations(alert_rules: list[dict[str, Any]]) -> None:
    by_metric: dict[str, list[str]] = {}
    for rule in alert_rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        for name in promql_metric_names(rule["expr"]):
            by_metric.setdefault(_base_name(name), []).append(rule["expr"])
    for metric in (
        "up",
        "tracewatch_worker_up",
        "tracewatch_dlq",
        "tracewatch_consumer_lag",
        "tracewatch_alert_latency_seconds",
        "tracewatch_redis_used_memory_bytes",
        "tracewatch_redis_maxmemory_bytes",
    ):
        assert metric in by_metric, f"no alert rule reads {metric}"
    assert any(
        'rule="DUPLICATE_SALE"' in e and 'severity="critical"' in e
        for e in by_metric["tracewatch_alerts"]
    )
    assert any("> 0.5" in e for e in by_metric["tracewatch_alert_latency_seconds"])


def test_alert_rules_use_exported_metrics(
    alert_rules: list[dict[str, Any]], exported: frozenset[str]
) -> None:
    for rule in alert_rules:
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        missing = {name for name in names if not is_exported(name, exported)}
        assert not missing, f"{rule['alert']} reads metrics the worker does not export: {missing}"


# --- Grafana ------------------------------------------------------------------------------


def test_grafana_datasource_is_the_prometheus_service(
    services: dict[str, dict[str, Any]],
) -> None:
    datasources = [
        source
        for path in sorted(GRAFANA_DATASOURCES.glob("*.y*ml"))
        for source in _yaml(path)["datasources"]
    ]
    prom = [source for source in datasources if source["type"] == "prometheus"]
    assert len(prom) == 1
    assert prom[0]["url"] == "http://prometheus:9090"
    assert prom[0]["uid"] == "prometheus"
    assert "prometheus" in services


def test_grafana_loads_the_dashboard_folder(services: dict[str, dict[str, Any]]) -> None:
    mounts = {target: source for source, target in _mounts(services["grafana"])}
    assert _host_path(mounts["/etc/grafana/provisioning"]) == GRAFANA_DASHBOARDS.parent
    providers = [
        provider
        for path in sorted(GRAFANA_DASHBOARDS.glob("*.y*ml"))
        for provider in _yaml(path)["providers"]
    ]
    paths = {provider["options"]["path"] for provider in providers}
    assert len(paths) == 1
    (path,) = paths
    assert path in mounts, f"dashboards provider reads {path}, which is not mounted"
    assert _host_path(mounts[path]) == DASHBOARD.parent


def test_dashboard_is_the_tracewatch_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "tracewatch"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 39
    panels = list(_dashboard_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    queries = [panel for panel in panels if panel["type"] != "row"]
    assert len(queries) >= 11
    for panel in queries:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["type"] == "prometheus"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in {"${datasource}", "prometheus"}
        position = panel["gridPos"]
        assert 0 <= position["x"] and position["x"] + position["w"] <= 24


def test_dashboard_shows_what_was_asked(dashboard: dict[str, Any]) -> None:
    used = {
        _base_name(name)
        for _, expr in _dashboard_exprs(dashboard)
        for name in promql_metric_names(expr)
    }
    wanted = {_base_name(name) for name in DASHBOARD_MUST_USE}
    assert wanted <= used, f"no panel shows {sorted(wanted - used)}"
    exprs = [expr for _, expr in _dashboard_exprs(dashboard)]
    assert any("histogram_quantile(0.5," in e and "alert_latency" in e for e in exprs)
    assert any("histogram_quantile(0.99," in e and "alert_latency" in e for e in exprs)
    assert any("histogram_quantile(0.99," in e and "batch_seconds" in e for e in exprs)


def test_dashboard_uses_exported_metrics(
    dashboard: dict[str, Any], exported: frozenset[str]
) -> None:
    for where, expr in _dashboard_exprs(dashboard):
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        missing = {name for name in names if not is_exported(name, exported)}
        assert not missing, f"{where} reads metrics the worker does not export: {missing}"


# --- Kafka topics ---------------------------------------------------------------------------


def _run_create_topics(tmp_path: Path, **env: str) -> list[list[str]]:
    """Run create-topics.sh with stand-ins for the Kafka tools; the calls they received."""
    log = tmp_path / "calls"
    stub = tmp_path / "kafka-tool"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$STUB_LOG"\n', encoding="utf-8")
    stub.chmod(0o755)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("TRACEWATCH_")}
    environ.update(KAFKA_TOPICS=str(stub), KAFKA_CONFIGS=str(stub), STUB_LOG=str(log), **env)
    subprocess.run(
        ["bash", str(CREATE_TOPICS)], env=environ, check=True, capture_output=True, timeout=30
    )
    return [line.split() for line in log.read_text(encoding="utf-8").splitlines()]


def _option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def _options(call: list[str], name: str) -> list[str]:
    return [call[i + 1] for i, word in enumerate(call) if word == name]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_create_topics_makes_the_production_topics(tmp_path: Path) -> None:
    calls = _run_create_topics(tmp_path)
    creates = {_option(c, "--topic"): c for c in calls if "--create" in c}
    assert set(creates) == set(TOPICS)
    for topic, (partitions, retention_ms) in TOPICS.items():
        call = creates[topic]
        assert "--if-not-exists" in call
        assert _option(call, "--bootstrap-server") == "localhost:9092"
        assert int(_option(call, "--partitions")) == partitions
        assert int(_option(call, "--replication-factor")) == 3
        configs = dict(item.split("=", 1) for item in _options(call, "--config"))
        assert int(configs["retention.ms"]) == retention_ms
        assert configs["cleanup.policy"] == "delete"
        assert configs["min.insync.replicas"] == "2"
    alters = {_option(c, "--entity-name"): c for c in calls if "--alter" in c}
    assert set(alters) == set(TOPICS)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_create_topics_reads_bootstrap_and_replication(tmp_path: Path) -> None:
    calls = _run_create_topics(
        tmp_path, TRACEWATCH_KAFKA="kafka:9092", TRACEWATCH_TOPIC_REPLICATION="1"
    )
    for call in calls:
        assert _option(call, "--bootstrap-server") == "kafka:9092"
    for call in (c for c in calls if "--create" in c):
        assert _option(call, "--replication-factor") == "1"
        assert "min.insync.replicas=1" in _options(call, "--config")


def test_topics_are_the_workers_topics(services: dict[str, dict[str, Any]]) -> None:
    from streams.settings import load_settings

    settings = load_settings({})
    assert {
        settings.topic_events,
        settings.topic_codes,
        settings.topic_persons,
        settings.topic_alerts,
        settings.topic_dlq,
    } == set(TOPICS)
    # the worker in compose expects the partitions kafka-init gives its topics
    partitions = int(_environment(services["worker"])["TRACEWATCH_PARTITIONS"])
    assert partitions == TOPICS["tracewatch.events"][0]
    init = services["kafka-init"]
    assert any(_host_path(source) == CREATE_TOPICS for source, _ in _mounts(init))
    assert services["worker"]["depends_on"]["kafka-init"]["condition"] == (
        "service_completed_successfully"
    )


# --- the real tools, where installed ------------------------------------------------------


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or a v2 `docker-compose`; None when neither is here."""
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if plugin.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        probe = subprocess.run(
            [legacy, "version", "--short"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return [legacy]
    return None


@pytest.fixture(scope="module")
def compose_command() -> list[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 here (docker compose plugin absent)")
    return command


def _compose_env(tmp_path: Path, **env: str) -> tuple[dict[str, str], Path]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("TRACEWATCH_")}
    environ.update(env)
    env_file = tmp_path / "empty.env"  # so that a developer's own .env does not count
    env_file.write_text("", encoding="utf-8")
    return environ, env_file


def test_docker_compose_config_is_valid(compose_command: list[str], tmp_path: Path) -> None:
    environ, env_file = _compose_env(tmp_path, TRACEWATCH_PSN_KEY="test-key")
    result = subprocess.run(
        [*compose_command, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_docker_compose_requires_the_psn_key(compose_command: list[str], tmp_path: Path) -> None:
    environ, env_file = _compose_env(tmp_path)
    result = subprocess.run(
        [*compose_command, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "TRACEWATCH_PSN_KEY" in result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_config_and_rules() -> None:
    for args in (["check", "config", str(PROMETHEUS)], ["check", "rules", str(ALERTS)]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_parses_the_dashboard_queries(dashboard: dict[str, Any], tmp_path: Path) -> None:
    grafana_variables = {"$__rate_interval": "1m", "$__range": "1h", "$job": "tracewatch"}
    rules = []
    for number, (where, expr) in enumerate(_dashboard_exprs(dashboard)):
        for variable, value in grafana_variables.items():
            expr = expr.replace(variable, value)
        rules.append(
            {"record": f"dashboard:query_{number}", "expr": expr, "labels": {"where": where}}
        )
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
