"""The package as a user gets it: a wheel installed into a fresh venv, run from outside the checkout.

The wheel's dependencies are the ones this test run already has (installing torch and vLLM again would
take gigabytes and minutes): a .pth line puts the test venv's site-packages behind the fresh venv's own.
asympo itself and the services are imported from the wheel, never from the checkout.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from asympo.runtime.api_token import TOKEN_ENV
from asympo.runtime.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the asympo wheel (its bin/ directory)."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = root.glob("asympo-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", purelib, str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    # Console scripts are not written by --target: the `asympo` command is the entry point's one-liner.
    (venv / "bin" / "asympo").write_text(
        f"#!{py}\nimport sys\nfrom asympo.cli.app import app\nsys.exit(app())\n"
    )
    (venv / "bin" / "asympo").chmod(0o755)
    (Path(purelib) / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin"


def _run(
    bin_dir: Path, cwd: Path, *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", TOKEN_ENV)}
    return subprocess.run([str(bin_dir / "asympo"), *args], cwd=cwd, env={**environ, **env}, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_asympo_comes_from_the_wheel(installed, tmp_path):
    py = installed / "python"
    code = "import asympo, services, asympo.examples; print(asympo.__file__, services.__file__)"
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(REPO) not in out.stdout and str(installed.parent) in out.stdout


def test_reference_help_from_the_wheel(installed, tmp_path):
    out = _run(installed, tmp_path, "reference", "--help")
    assert out.returncode == 0, out.stderr
    assert "--staleness" in out.stdout and "single" not in out.stderr


def test_bench_outside_a_checkout_says_where_benchmarks_are(installed, tmp_path):
    out = _run(installed, tmp_path, "bench", "bus")
    assert out.returncode == 2 and "source checkout" in out.stderr


@pytest.mark.slow
def test_demo_from_the_wheel(installed, tmp_path, tiny_cache):
    """The whole demo (local stack, job, report) with the job shipped inside the package."""
    out = _run(
        installed, tmp_path, "--home", str(tmp_path / "home"), "demo", "--engine", "hf",
        "--gateway-port", str(free_port()), "--set", "algorithm.steps=2", "--set", "eval.every=2",
        timeout=900, ASYMPO_LEARNER_MODEL_CACHE=str(tiny_cache),
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "succeeded" in out.stdout
    reports = list((tmp_path / "home" / "reports").glob("*/summary.json"))
    assert len(reports) == 1


def test_demo_without_the_local_extra_says_what_to_install(installed, tmp_path):
    """The core alone (no torch, no services' extras): the demo names the extra instead of a traceback."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'math_verify'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    out = _run(installed, tmp_path, "--home", str(tmp_path / "home"), "demo", PYTHONPATH=str(tmp_path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install 'asympo[local]'" in out.stderr and "torch" in out.stderr
    assert not (tmp_path / "home" / "pids").exists()  # nothing was started
