"""Each image installs its service's extra, constrained by a lock file that satisfies pyproject.toml.

Read from the files themselves: the Dockerfile's pip lines, pyproject's extras and the lock's pins. A
service whose import pulls in torch (or anything outside its extra) fails the import checks below.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# service -> the extra its image installs (on GPU) and the module that starts it
IMAGES = {
    "gateway": ("gateway", "services.gateway.app"),
    "reward": ("reward", "services.reward.server"),
    "rollout": ("gpu", "services.rollout.service"),
    "learner": ("learner", "services.learner.service"),
}
HEAVY = ("torch", "transformers", "vllm", "matplotlib", "pyarrow", "math_verify", "fastapi")


def requirements(extra: str | None, seen: set[str] | None = None) -> list[Requirement]:
    """The core's requirements plus an extra's, following self-references (asympo[model])."""
    seen = set() if seen is None else seen
    out = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]] if not seen else []
    if extra is None or extra in seen:
        return out
    seen.add(extra)
    for raw in PYPROJECT["project"]["optional-dependencies"][extra]:
        req = Requirement(raw)
        if canonicalize_name(req.name) == "asympo":
            for inner in req.extras:
                out += requirements(inner, seen)
        else:
            out.append(req)
    return out


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock file."""
    found = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            found[canonicalize_name(m.group(1))] = m.group(2)
    return found


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_the_image_installs_its_extra_with_its_lock(service):
    extra, _ = IMAGES[service]
    dockerfile = (REPO / "services" / service / "Dockerfile").read_text()
    installs = re.findall(r'pip install (--constraint requirements\.lock )?"\.\[(\w+)\]"', dockerfile)
    assert installs, f"{service}/Dockerfile installs no extra of asympo"
    locked = [e for constrained, e in installs if constrained]
    assert locked == [extra], f"{service}/Dockerfile: locked installs {locked}, expected [{extra!r}]"
    assert f"services/{service}/requirements.lock" in dockerfile, "the lock file is not copied into the build"
    # CPU variants resolve at build time; they may only add the engine, never a different service's extra.
    assert {e for _, e in installs} <= {extra, "cpu", "learner"}


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_the_lock_satisfies_the_extra(service):
    extra, _ = IMAGES[service]
    locked = pins(REPO / "services" / service / "requirements.lock")
    for req in requirements(extra):
        name = canonicalize_name(req.name)
        assert name in locked, f"{service}: {req.name} (from pyproject) is not in its lock; run `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{service}: lock pins {req.name}=={locked[name]}, pyproject asks {req.specifier}; run `make lock`"
        )


def test_gateway_and_reward_locks_hold_no_torch():
    for service in ("gateway", "reward"):
        locked = pins(REPO / "services" / service / "requirements.lock")
        assert not {"torch", "transformers", "vllm"} & set(locked), service


def test_the_gateway_extra_brings_no_model_stack():
    names = {canonicalize_name(r.name) for r in requirements("gateway")}
    assert "fastapi" in names and not {"torch", "transformers", "matplotlib", "math-verify"} & names


_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is outside this service's extra")
sys.meta_path.insert(0, Block())
import {module}
"""


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("services.gateway.app", {"fastapi"}),
        ("services.reward.server", {"math_verify"}),
        ("asympo.cli.app", set()),
    ],
)
def test_light_services_import_without_the_model_stack(module, allowed):
    blocked = sorted(set(HEAVY) - allowed)
    code = _BLOCKER.format(blocked=blocked, module=module)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_blocker_catches_an_import_of_torch():
    """The check above can fail: a module that does import torch is refused."""
    code = _BLOCKER.format(blocked=["torch"], module="services.learner.service")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "outside this service's extra" in proc.stderr
