"""The container and observability files (Dockerfiles, docker-compose.yml, deploy/prometheus, deploy/grafana)
against the code they describe.

No image is built and no Grafana runs here (there is no Docker engine): Dockerfiles are parsed, the
compose file is rendered by the real `docker compose`/`docker-compose`, Prometheus files are checked and
unit-tested by the real `promtool`, every PromQL query is parsed by promtool, and every metric name they
use is looked up in the services' own Prometheus registries. The containers' HEALTHCHECK commands are run
for real against the servers they probe.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "asympo.json"
GRAFANA_DATASOURCE = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDER = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "asympo.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / "compose" / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
SERVICES = ("gateway", "reward", "rollout", "learner")
# gRPC + metrics ports of each service (the gateway serves /metrics on its API port).
PORTS = {"gateway": {8000}, "reward": {50051, 9101}, "rollout": {50052, 9102}, "learner": {50053, 9103}}

PROMTOOL_MISSING = (
    "promtool is not on PATH: install Debian's `prometheus` package "
    "(apt-get install -y --no-install-recommends prometheus)"
)
COMPOSE_MISSING = (
    "neither `docker compose` (the Compose plugin) nor `docker-compose` works here: install Debian's "
    "`docker-compose` package (apt-get install -y --no-install-recommends docker-compose)"
)

METRIC = re.compile(r"\basympo_[a-z0-9_]+")
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
# Grafana's own variables are not PromQL; promtool parses the queries with these stand-ins.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$pod": ".*"}

REQUIRED_PANELS = {
    "Tokens/s generated per pod",
    "Tokens/s trained",
    "Groups/s",
    "Prompt backlog and in-flight",
    "Staleness histogram",
    "Dropped groups by reason",
    "Reward mean, accuracy and held-out accuracy",
    "Loss, delta and balance ratio R",
    "Served version per pod vs learner version",
    "Reload latency (rollout)",
    "Publish latency (learner)",
    "Reward latency",
    "Reward timeout rate",
    "Step time",
    "GPU utilization (DCGM, optional)",
    "Redis memory: used vs maxmemory",
    "Update gauges: neg_share and gradient norms",
    "Delta and balance ratio R by staleness",
}
REQUIRED_ALERTS = {
    "AsympoRolloutPodStuckOnOldVersion",
    "AsympoPromptBacklogGrowing",
    "AsympoRewardTimeouts",
    "AsympoLearnerIdle",
    "AsympoRedisMemoryHigh",
    "AsympoRedisNoMemoryLimit",
    "AsympoRedisEvicting",
}


# ---- the services' registries ---------------------------------------------------------------------------


def registries() -> dict[str, object]:
    """A fresh metrics object of every service, the very classes the services export."""
    from services.gateway.metrics import GatewayMetrics
    from services.learner.metrics import LearnerMetrics
    from services.reward.metrics import RewardMetrics
    from services.rollout.metrics import RolloutMetrics

    return {
        "learner": LearnerMetrics(),
        "rollout": RolloutMetrics(),
        "reward": RewardMetrics(),
        "gateway": GatewayMetrics(),
    }


def exposed_names() -> tuple[dict[str, str], dict[str, str]]:
    """(every series name a /metrics page can show → service, every family name → service)."""
    exposed, families = {}, {}
    for service, metrics in registries().items():
        for family in metrics.registry.collect():
            families[family.name] = service
            # Labelled metrics have no samples until a label set is used: derive their names from the type.
            for suffix in SAMPLE_SUFFIXES[family.type]:
                exposed[family.name + suffix] = service
            for sample in family.samples:
                exposed[sample.name] = service
    return exposed, families


def family_of(name: str) -> str:
    return re.sub(r"_(bucket|sum|count|total)$", "", name)


# ---- the dashboard --------------------------------------------------------------------------------------


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append(
                (f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"])
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            queries.append((f"variable {variable['name']}", query))
    return queries


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_metric_queried_is_exported_by_a_service():
    exposed, families = exposed_names()
    queries = dashboard_queries(load_dashboard()) + [
        (f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()
    ]
    unknown, used = [], set()
    for where, expr in queries:
        for name in METRIC.findall(expr):
            # The exact name must exist (a counter queried without `_total` matches nothing in
            # Prometheus), and so must the family it belongs to.
            if name not in exposed or family_of(name) not in families:
                unknown.append(f"{where}: {name}")
            else:
                used.add(exposed[name])
    assert not unknown, "metrics no service exports:\n" + "\n".join(unknown)
    assert used == {"learner", "rollout", "reward", "gateway"}


def test_the_only_foreign_metric_is_the_optional_dcgm_one():
    for where, expr in dashboard_queries(load_dashboard()):
        for name in re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b", expr):
            if name.startswith("DCGM_"):
                assert "GPU utilization (DCGM, optional)" in where, f"{where} queries {name}"


def test_dashboard_has_the_panels_and_only_the_provisioned_datasource():
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    titles = [p["title"] for p in panels]
    assert REQUIRED_PANELS <= set(titles), f"missing panels: {sorted(REQUIRED_PANELS - set(titles))}"
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    assert len({p["id"] for p in panels}) == len(panels), "duplicate panel ids"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refIds"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", f"{panel['title']} {target['refId']}"
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == "prometheus", variable["name"]
    gpu = next(p for p in panels if p["title"] == "GPU utilization (DCGM, optional)")
    assert "DCGM_FI_DEV_GPU_UTIL" in gpu["targets"][0]["expr"]
    assert "optional" in gpu["description"].lower() and "external" in gpu["description"].lower()


def test_dashboard_panels_fit_the_grid_without_overlapping():
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_grafana_provisioning_points_at_the_compose_prometheus_and_dashboards():
    datasources = yaml.safe_load(GRAFANA_DATASOURCE.read_text())["datasources"]
    assert [(d["uid"], d["type"]) for d in datasources] == [("prometheus", "prometheus")]
    assert datasources[0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(GRAFANA_PROVIDER.read_text())["providers"][0]
    assert provider["type"] == "file"
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    env = compose["services"]["grafana"]["environment"]
    assert (
        env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{provider['options']['path']}/{DASHBOARD.name}"
    )


# ---- promtool -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_MISSING)
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_promtool_accepts_the_rules_and_the_config(promtool):
    run_promtool(promtool, "check", "rules", str(ALERTS))
    # Also loads the rule files the config names, relative to the config's directory.
    out = run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in out.stdout + out.stderr


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries(load_dashboard())):
        if where.startswith("variable"):
            # label_values(metric, label) is Grafana's, not PromQL: its metric argument is what Prometheus sees.
            expr = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr).group(1)
        for variable, stand_in in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, stand_in)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", str(path))


def test_the_required_alerts_exist():
    names = {rule["alert"] for rule in alert_rules()}
    assert REQUIRED_ALERTS <= names, f"missing alerts: {sorted(REQUIRED_ALERTS - names)}"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def expected(alert: str, summary: str, **labels: str) -> dict:
    """An alert as promtool reports it: the rule's labels plus `labels`, the rendered summary, and the
    rule's description (static text in every rule)."""
    rule = next(r for r in alert_rules() if r["alert"] == alert)
    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]},
    }


POD_A, POD_B = "10.0.0.5:9102", "10.0.0.6:9102"
LEARNER = 'job="asympo-learner", instance="10.0.0.9:9103"'
# Two gateway replicas, both reading the one Redis.
GATEWAYS = (
    'job="asympo-gateway", instance="10.0.0.7:8000"',
    'job="asympo-gateway", instance="10.0.0.8:8000"',
)


def redis_series(used: str, maxmemory: str, evicted: str) -> list[dict]:
    """The gateway's Redis series, as each replica reports them."""
    values = {"used_memory_bytes": used, "maxmemory_bytes": maxmemory, "evicted_keys_total": evicted}
    return [{"series": f"asympo_gateway_redis_{name}{{{gateway}}}", "values": v}
            for gateway in GATEWAYS for name, v in values.items()]  # fmt: skip


def alert_tests() -> list[dict]:
    """promtool unit tests: synthetic series, one minute apart, and the alerts expected at given times."""
    return [
        {  # pod A stays on version 10 while the learner moves on; pod B follows one version behind
            "interval": "1m",
            "input_series": [
                {"series": f"asympo_learner_version{{{LEARNER}}}", "values": "10+1x40"},
                {"series": f'asympo_rollout_served_version{{instance="{POD_A}"}}', "values": "10x40"},
                {"series": f'asympo_rollout_served_version{{instance="{POD_B}"}}', "values": "9+1x40"},
            ],
            "alert_rule_test": [
                # lag 4 at 4 min: not yet over the threshold, and `for` has not elapsed
                {"eval_time": "4m", "alertname": "AsympoRolloutPodStuckOnOldVersion", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "AsympoRolloutPodStuckOnOldVersion",
                    "exp_alerts": [
                        expected(
                            "AsympoRolloutPodStuckOnOldVersion",
                            f"Rollout pod {POD_A} is 20 versions behind the learner",
                            instance=POD_A,
                        )
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": f'asympo_rollout_reload_failures_total{{instance="{POD_A}", reason="probe"}}',
                    "values": "0 0 1x30",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "AsympoRolloutReloadFailing",
                    "exp_alerts": [
                        expected(
                            "AsympoRolloutReloadFailing",
                            f"Rollout pod {POD_A} refuses new versions (probe)",
                            instance=POD_A,
                            reason="probe",
                        )
                    ],
                },
                # the failure is older than the 15-minute window by then
                {"eval_time": "30m", "alertname": "AsympoRolloutReloadFailing", "exp_alerts": []},
            ],
        },
        {  # the backlog grows by 5 tasks a minute; pods generate, just not fast enough
            "interval": "1m",
            "input_series": [
                {"series": f"asympo_learner_prompt_backlog{{{LEARNER}}}", "values": "0+5x60"},
                {
                    "series": f'asympo_rollout_tokens_generated_total{{instance="{POD_A}"}}',
                    "values": "0+100x60",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "AsympoPromptBacklogGrowing", "exp_alerts": []},
                {
                    "eval_time": "40m",
                    "alertname": "AsympoPromptBacklogGrowing",
                    "exp_alerts": [
                        expected(
                            "AsympoPromptBacklogGrowing",
                            "The prompt backlog keeps growing (200 tasks not picked up)",
                            job="asympo-learner",
                            instance="10.0.0.9:9103",
                        )
                    ],
                },
                {"eval_time": "40m", "alertname": "AsympoRolloutStalled", "exp_alerts": []},
            ],
        },
        {  # a steady backlog and pods that generate nothing
            "interval": "1m",
            "input_series": [
                {"series": f"asympo_learner_prompt_backlog{{{LEARNER}}}", "values": "16x40"},
                {
                    "series": f'asympo_rollout_tokens_generated_total{{instance="{POD_A}"}}',
                    "values": "500x40",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "AsympoPromptBacklogGrowing", "exp_alerts": []},
                {
                    "eval_time": "30m",
                    "alertname": "AsympoRolloutStalled",
                    "exp_alerts": [
                        expected(
                            "AsympoRolloutStalled",
                            "Prompts are waiting and no rollout pod has generated a token for 10 minutes",
                            job="asympo-learner",
                            instance="10.0.0.9:9103",
                        )
                    ],
                },
            ],
        },
        {  # 10 % of the items time out; the pods' calls fail too
            "interval": "1m",
            "input_series": [
                {"series": 'asympo_reward_items_total{verifier="exact", status="ok"}', "values": "0+90x40"},
                {
                    "series": 'asympo_reward_items_total{verifier="exact", status="timeout"}',
                    "values": "0+10x40",
                },
                {"series": 'asympo_reward_timeouts_total{verifier="exact"}', "values": "0+10x40"},
                {"series": f'asympo_rollout_reward_failures_total{{instance="{POD_B}"}}', "values": "0+1x40"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "AsympoRewardTimeouts",
                    "exp_alerts": [
                        expected("AsympoRewardTimeouts", "10% of reward items hit their deadline")
                    ],
                },
                {
                    "eval_time": "20m",
                    "alertname": "AsympoRewardCallsFailing",
                    "exp_alerts": [
                        expected(
                            "AsympoRewardCallsFailing",
                            f"Rollout pod {POD_B} cannot score groups with the reward service",
                            instance=POD_B,
                        )
                    ],
                },
            ],
        },
        {  # the learner stops at step 7 with work outstanding; a paused job must not count
            "interval": "1m",
            "input_series": [
                {"series": f"asympo_learner_step{{{LEARNER}}}", "values": "1+1x6 7x60"},
                {"series": f"asympo_learner_prompts_in_flight{{{LEARNER}}}", "values": "48x70"},
                {"series": f"asympo_learner_job_active{{{LEARNER}}}", "values": "1x70"},
                {"series": f'asympo_rollout_paused{{instance="{POD_A}"}}', "values": "0x45 1x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "AsympoLearnerIdle", "exp_alerts": []},
                {
                    "eval_time": "30m",
                    "alertname": "AsympoLearnerIdle",
                    "exp_alerts": [
                        expected(
                            "AsympoLearnerIdle",
                            "The learner has made no step for over 10 minutes with 48 prompts in flight",
                            job="asympo-learner",
                            instance="10.0.0.9:9103",
                        )
                    ],
                },
                {"eval_time": "60m", "alertname": "AsympoLearnerIdle", "exp_alerts": []},
            ],
        },
        {  # Redis fills up to 90% of a 2 GB maxmemory by minute 16, then evicts 7 keys a minute from 20
            "interval": "1m",
            "input_series": redis_series("1e9+5e7x16 1.8e9x30", "2e9x46", "0x20 7+7x25"),
            "alert_rule_test": [
                # 75% at 10 min; over 85% from 15 min, firing only after the 5 min of `for`
                {"eval_time": "10m", "alertname": "AsympoRedisMemoryHigh", "exp_alerts": []},
                {"eval_time": "18m", "alertname": "AsympoRedisMemoryHigh", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "AsympoRedisEvicting", "exp_alerts": []},
                {
                    "eval_time": "30m",
                    "alertname": "AsympoRedisMemoryHigh",
                    "exp_alerts": [expected("AsympoRedisMemoryHigh", "Redis uses 90% of its maxmemory")],
                },
                {
                    "eval_time": "30m",
                    "alertname": "AsympoRedisEvicting",
                    "exp_alerts": [
                        expected(
                            "AsympoRedisEvicting", "Redis is at maxmemory and evicted 70 keys in 10 minutes"
                        )
                    ],
                },
                {"eval_time": "30m", "alertname": "AsympoRedisNoMemoryLimit", "exp_alerts": []},
            ],
        },
        {  # a Redis without maxmemory: never "high" (no ratio to take), always unbounded
            "interval": "1m",
            "input_series": redis_series("3e9x20", "0x20", "0x20"),
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "AsympoRedisNoMemoryLimit", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "AsympoRedisNoMemoryLimit",
                    "exp_alerts": [
                        expected(
                            "AsympoRedisNoMemoryLimit",
                            "Redis has no maxmemory: it will be OOM-killed instead of refusing writes",
                        )
                    ],
                },
                {"eval_time": "10m", "alertname": "AsympoRedisMemoryHigh", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "AsympoRedisEvicting", "exp_alerts": []},
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {"series": 'up{job="asympo-reward", instance="10.0.0.2:9101"}', "values": "1 1 0x20"}
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "AsympoTargetDown",
                    "exp_alerts": [
                        expected(
                            "AsympoTargetDown",
                            "asympo-reward target 10.0.0.2:9101 is down",
                            job="asympo-reward",
                            instance="10.0.0.2:9101",
                        )
                    ],
                }
            ],
        },
        {  # the learner dies twice at minute 5; a learner that never crashed raises nothing
            "interval": "1m",
            "input_series": [{"series": f"asympo_learner_job_restarts{{{LEARNER}}}", "values": "0x5 2x10"}],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "AsympoLearnerCrashing", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "AsympoLearnerCrashing",
                    "exp_alerts": [
                        expected(
                            "AsympoLearnerCrashing",
                            "The running job has lost its learner 2 times without a clean shutdown",
                        )
                    ],
                },
            ],
        },
    ]


def test_alerts_fire_when_they_should_and_only_then(promtool, tmp_path):
    tests = alert_tests()
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert needs a firing case"
    path = tmp_path / "alerts-test.yml"
    path.write_text(
        yaml.safe_dump(
            {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests}, sort_keys=False
        )
    )
    run_promtool(promtool, "test", "rules", str(path))


def test_prometheus_scrapes_every_service_on_its_real_port():
    from services.gateway.settings import GatewaySettings
    from services.learner.settings import LearnerSettings
    from services.reward.settings import RewardSettings
    from services.rollout.settings import RolloutSettings

    ports = {
        "reward": RewardSettings.model_fields["metrics_port"].default,
        "rollout": RolloutSettings.model_fields["metrics_port"].default,
        "learner": LearnerSettings.model_fields["metrics_port"].default,
        "gateway": GatewaySettings.model_fields["port"].default,  # /metrics is on the API port
    }
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    for service, port in ports.items():
        (sd,) = jobs[f"asympo-{service}"]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == ([service], "A", port)
        assert service in compose
    # The CPU variants answer to the same DNS names, so the same jobs scrape them.
    for variant, name in (("rollout-cpu", "rollout"), ("learner-cpu", "learner")):
        assert compose[variant]["networks"]["default"]["aliases"] == [name]
    assert 'up{job=~"asympo-.*"}' in ALERTS.read_text()


# ---- docker compose -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail(COMPOSE_MISSING)
    return [legacy]


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def run_compose(cli: list[str], env_file: Path, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # Only what compose needs: a variable of the same name in the caller's environment would win over
    # the env file and hide a missing one.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker")}
    return subprocess.run(
        [*cli, "--project-directory", str(REPO), "-f", str(COMPOSE), "--env-file", str(env_file), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rendered(compose_cli, tmp_path_factory) -> dict:
    """The compose model with the example env file and both profiles, as the CLI resolves it."""
    tmp = tmp_path_factory.mktemp("compose")
    every_profile = ("--profile", "gpu", "--profile", "cpu")
    quiet = run_compose(compose_cli, ENV_EXAMPLE, *every_profile, "config", "-q", tmp_path=tmp)
    assert quiet.returncode == 0, quiet.stderr
    full = run_compose(compose_cli, ENV_EXAMPLE, *every_profile, "config", tmp_path=tmp)
    assert full.returncode == 0, full.stderr
    return yaml.safe_load(full.stdout)


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target → (source, read-only), from either CLI's rendering (short strings or long syntax)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found[target] = (source, mode == ["ro"])
        else:
            found[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return found


def gpu_reservations(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_renders_with_the_example_env_file(rendered):
    services = rendered["services"]
    assert set(services) == {
        "redis", "reward", "rollout", "rollout-cpu", "learner", "learner-cpu", "gateway", "prometheus", "grafana",
    }  # fmt: skip
    assert services["redis"]["image"].startswith("redis:7")
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--requirepass" in redis_command
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert mounts(services["prometheus"])["/etc/prometheus"] == (str(PROMETHEUS_CONFIG.parent), True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert [str(p["target"]) for p in services["gateway"]["ports"]] == ["8000"]


def docker_bytes(value: int | str) -> int:
    """A compose memory size ("3g", "512m", bytes) in bytes; Docker's units are powers of 1024."""
    number, unit = re.fullmatch(r"(\d+)([bkmg]?)b?", str(value).lower()).groups()
    return int(number) * 1024 ** "bkmg".index(unit or "b")


def test_compose_redis_is_durable_and_bounded_below_its_memory_limit(rendered):
    from asympo.bus.redis_config import EVICTION_POLICY, memory_bytes

    redis = rendered["services"]["redis"]
    shell = redis["command"][-1]
    assert shell.startswith("exec redis-server ")
    argv = shlex.split(shell.replace("$$", "$"))
    options = {argv[i][2:]: argv[i + 1] for i in range(len(argv)) if argv[i].startswith("--")}
    assert options["appendonly"] == "yes" and options["appendfsync"] == "everysec"
    assert options["aof-use-rdb-preamble"] == "yes" and options["maxmemory-policy"] == EVICTION_POLICY
    assert options["requirepass"] == "$REDIS_PASSWORD"
    limit, maxmemory = docker_bytes(redis["mem_limit"]), memory_bytes(options["maxmemory"])
    # Room below the limit for what maxmemory does not count (an AOF rewrite's fork, buffers).
    assert 0 < maxmemory <= limit * 0.7, (options["maxmemory"], redis["mem_limit"])


def test_gpu_and_cpu_variants_are_split_by_profile(rendered):
    services = rendered["services"]
    for name in ("rollout", "learner"):
        assert services[name]["profiles"] == ["gpu"]
        assert services[name]["build"]["args"]["ENGINE"] == "gpu"
        (device,) = gpu_reservations(services[name])
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # Both asking for `count` would put them on the same first GPUs; the pods name theirs instead.
    assert gpu_reservations(services["rollout"])[0]["device_ids"] == [env_example()["ROLLOUT_GPU_ID"]]
    assert int(gpu_reservations(services["learner"])[0]["count"]) >= 1
    for name in ("rollout-cpu", "learner-cpu"):
        assert services[name]["profiles"] == ["cpu"]
        assert services[name]["build"]["args"]["ENGINE"] == "cpu"
        assert not gpu_reservations(services[name])
    for name in ("rollout", "rollout-cpu"):
        assert services[name]["environment"]["ASYMPO_ROLLOUT_ENGINE"] == "vllm"
        assert services[name]["build"]["dockerfile"] == "services/rollout/Dockerfile"
    assert services["rollout-cpu"]["environment"]["ASYMPO_ROLLOUT_DEVICE"] == "cpu"
    for name in ("redis", "reward", "gateway", "prometheus", "grafana"):
        assert not services[name].get("profiles"), f"{name} must run under every profile"


def test_learner_runs_under_torchrun_with_one_rank_per_reserved_gpu(rendered):
    learner = rendered["services"]["learner"]
    argv = [*learner.get("entrypoint", []), *(learner.get("command") or [])]
    assert argv[0] == "torchrun" and argv[-2:] == ["-m", "services.learner"], argv
    ranks = argv[argv.index("--nproc-per-node") + 1]
    (device,) = gpu_reservations(learner)
    assert int(ranks) == int(device["count"]) == int(env_example()["LEARNER_GPUS"])


def test_learner_and_every_rollout_share_the_weight_store_at_one_path(rendered):
    services = rendered["services"]
    store = dockerfile_env("learner")["ASYMPO_LEARNER_WEIGHT_STORE"]
    assert store == "/data/weight-store"
    for name in ("learner", "learner-cpu", "rollout", "rollout-cpu"):
        source, read_only = mounts(services[name])[store]
        assert source == "weight-store", f"{name} mounts {source}, not the shared named volume"
        assert read_only == name.startswith("rollout"), f"{name}: only the learner writes versions"
    assert "weight-store" in rendered["volumes"]


def test_secrets_come_only_from_the_env_file(rendered, compose_cli, tmp_path):
    example = env_example()
    secrets = ("REDIS_PASSWORD", "ASYMPO_API_TOKEN", "GRAFANA_ADMIN_PASSWORD")
    raw = COMPOSE.read_text()
    for key in secrets:
        assert example[key], f"{key} needs a placeholder in .env.example"
        assert example[key] not in raw, f"the value of {key} is written into docker-compose.yml"
        assert f"${{{key}:?" in raw, f"{key} must be required (${{{key}:?message}})"
    services = rendered["services"]
    url = f"redis://:{example['REDIS_PASSWORD']}@redis:6379/0"
    for name in ("rollout", "rollout-cpu", "learner", "learner-cpu", "gateway"):
        assert services[name]["environment"]["ASYMPO_REDIS_URL"] == url, name
    assert services["gateway"]["environment"]["ASYMPO_API_TOKEN"] == example["ASYMPO_API_TOKEN"]
    assert (
        services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == example["GRAFANA_ADMIN_PASSWORD"]
    )
    # Every variable the compose file reads is documented in the example.
    code = "\n".join(line for line in raw.splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", code))
    assert used <= set(example), f"undocumented in .env.example: {sorted(used - set(example))}"

    for key in secrets:
        partial = tmp_path / f"without-{key}.env"
        partial.write_text("".join(f"{k}={v}\n" for k, v in example.items() if k != key))
        result = run_compose(compose_cli, partial, "config", "-q", tmp_path=tmp_path)
        assert result.returncode != 0 and key in result.stderr, (
            f"{key} missing was accepted:\n{result.stderr}"
        )


# ---- Dockerfiles ----------------------------------------------------------------------------------------


def dockerfile(service: str) -> Path:
    return REPO / "services" / service / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped, as the builder reads them."""
    parsed, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        parsed.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return parsed


def final_stage(service: str) -> list[tuple[str, str]]:
    parsed = instructions(dockerfile(service))
    last_from = max(i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


def env_pairs(args: str) -> dict[str, str]:
    return dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', args))


def dockerfile_env(service: str) -> dict[str, str]:
    env = {}
    for keyword, args in final_stage(service):
        if keyword == "ENV":
            env.update(env_pairs(args))
    return env


def healthcheck(service: str) -> tuple[dict[str, str], str]:
    """(options, shell command) of the final stage's HEALTHCHECK."""
    (args,) = [a for k, a in final_stage(service) if k == "HEALTHCHECK"]
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", args))
    assert " CMD " in f" {args} ", f"{service}: HEALTHCHECK without CMD"
    command = args.split("CMD", 1)[1].strip()
    assert not command.startswith("["), f"{service}: the probe is written in shell form"
    return options, command


def listening_ports(service: str) -> set[int]:
    """The ports the service binds by default, from its settings class."""
    from services.gateway.settings import GatewaySettings
    from services.learner.settings import LearnerSettings
    from services.reward.settings import RewardSettings
    from services.rollout.settings import RolloutSettings

    settings = {"gateway": GatewaySettings, "reward": RewardSettings, "rollout": RolloutSettings,
                "learner": LearnerSettings}[service]  # fmt: skip
    fields = settings.model_fields
    return {fields[name].default for name in ("port", "metrics_port") if name in fields}


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_its_ports(service):
    parsed = instructions(dockerfile(service))
    stage = final_stage(service)
    assert any(k == "RUN" and "useradd" in a and "--uid 10001" in a for k, a in parsed), "no uid 10001 user"
    users = [a for k, a in stage if k == "USER"]
    assert users and users[-1].split(":")[0] == "10001", f"last USER is {users[-1:] or 'root'}"
    options, _ = healthcheck(service)
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    exposed = {int(p.split("/")[0]) for k, a in stage if k == "EXPOSE" for p in a.split()}
    assert exposed == PORTS[service] == listening_ports(service), f"EXPOSE {exposed}"
    env = dockerfile_env(service)
    prefix = f"ASYMPO_{service.upper()}_"
    assert env[prefix + "HOST"] == "0.0.0.0", "the service must listen beyond loopback in a container"
    assert int(env[prefix + "PORT"]) in exposed
    (entrypoint,) = [a for k, a in stage if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", f"services.{service}"]


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_installs_the_right_build_and_bakes_in_no_secret(service):
    text = dockerfile(service).read_text()
    parsed = instructions(dockerfile(service))
    base = next(a for k, a in parsed if k == "ARG" and a.split("=")[0] in ("PYTHON_IMAGE", "BASE_IMAGE"))
    if service in ("gateway", "reward"):
        assert base == "PYTHON_IMAGE=python:3.11-slim"
        assert "torch" not in text  # their extras hold none (test_images.py checks the extras themselves)
    else:
        assert base.startswith("BASE_IMAGE=nvidia/cuda:12.") and "runtime" in base
    if service == "rollout":
        assert '".[cpu]"' in text and "torch==2.13.0" in text
    secret = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY|REDIS_URL|CREDENTIAL", re.IGNORECASE)
    for keyword, args in parsed:
        if keyword in ("ENV", "ARG"):
            names = env_pairs(args) or {args.split("=")[0]: ""}
            assert not [n for n in names if secret.search(n)], f"{keyword} {args}"
        assert not re.search(r"redis://[^\s@]*:[^\s@]+@", args), f"credentials in {keyword}"
        if keyword in ("COPY", "ADD") and not args.startswith("--from="):
            *sources, _ = args.split()
            for source in sources:
                allowed = (
                    "pyproject.toml",
                    "README.md",
                    "asympo",
                    "services",
                    f"services/{service}/requirements.lock",
                )
                assert source in allowed, f"{keyword} {args}"
                assert not ignored_by_docker(source, dockerignore_patterns()), f"{source} is in .dockerignore"


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as the builder reads it: `**` spans directories, `*` and `?` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """The last matching pattern decides and `!` re-includes; excluding a directory excludes its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        regex = dockerignore_regex(pattern.lstrip("!").rstrip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not pattern.startswith("!")
    return verdict


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context():
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", ".asympo/api-token", "runs/demo/report.json", ".env",
                 "deploy/compose/.env", "services/__pycache__/x.pyc"):  # fmt: skip
        assert ignored_by_docker(path, patterns), f"{path} would be sent to the builder"
    for path in ("pyproject.toml", "README.md", "asympo/jobs/spec.py", "services/reward/server.py"):
        assert not ignored_by_docker(path, patterns), f"{path} is needed by `pip install .`"


# ---- the HEALTHCHECK commands, run for real ---------------------------------------------------------------


def probe_env(**extra: str) -> dict[str, str]:
    # The image puts its venv first on PATH; here the test's interpreter plays that part.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


async def run_probe(command: str, env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)  # fmt: skip
    return await asyncio.wait_for(proc.wait(), 60)


@pytest.mark.parametrize("service", ("reward", "rollout", "learner"))
async def test_grpc_healthcheck_follows_the_servers_health_status(service):
    from asympo.runtime.grpc_server import GrpcServer

    _, command = healthcheck(service)
    variable = f"ASYMPO_{service.upper()}_PORT"
    server = GrpcServer("127.0.0.1", 0)  # the scaffold every asympo gRPC service serves health through
    port = await server.start()
    try:
        assert await run_probe(command, probe_env(**{variable: str(port)})) == 0
        await server.health.enter_graceful_shutdown()  # what a SIGTERM does first
        assert await run_probe(command, probe_env(**{variable: str(port)})) != 0
    finally:
        await server.stop(0)
    assert await run_probe(command, probe_env(**{variable: str(port)})) != 0, "nothing listens any more"


def test_gateway_healthcheck_against_the_real_gateway(redis_server):
    _, command = healthcheck("gateway")
    env = probe_env(ASYMPO_REDIS_URL=redis_server.url, ASYMPO_API_TOKEN="probe-test-token-0123456789")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    serving = threading.Event()
    port: list[int] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("msg") == "serving":
                port.append(record["port"])
                serving.set()

    threading.Thread(target=read, daemon=True).start()
    probe = ["/bin/sh", "-c", command]
    try:
        assert serving.wait(120), "the gateway did not start:\n" + "".join(lines[-40:])
        gateway_env = {**env, "ASYMPO_GATEWAY_PORT": str(port[0])}
        ok = subprocess.run(probe, env=gateway_env, capture_output=True, timeout=60)
        assert ok.returncode == 0, ok.stderr.decode()
    finally:
        proc.terminate()
        proc.wait(30)
    down = subprocess.run(probe, env=gateway_env, capture_output=True, timeout=60)
    assert down.returncode != 0, "the probe passed with no gateway running"
