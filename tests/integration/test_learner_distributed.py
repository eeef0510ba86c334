"""FSDP2 on gloo: 2 ranks give the same loss and updated weights as 1 rank on the same global batch."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.learner.update_gauges import GAUGE_KEYS

pytestmark = pytest.mark.slow  # torchrun with 1, 2 and 4 ranks

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
# fp32 throughout; reduction order across ranks and micro-batches differs, nothing else.
LOSS_TOL = 1e-6
WEIGHT_TOL = 5e-5


def _run(nproc: int, out: Path) -> dict:
    cmd = [str(TORCHRUN), "--nproc-per-node", str(nproc), "--standalone",
           "-m", "tests.support.learner_equivalence", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("equivalence")
    return _run(1, tmp / "one.pt"), _run(2, tmp / "two.pt")


@pytest.mark.parametrize("loss", ["asympo", "spo", "gpg", "grpo"])
def test_two_ranks_match_one(runs, loss):
    one, two = runs[0][loss], runs[1][loss]
    for s1, s2 in zip(one["stats"], two["stats"], strict=True):
        assert abs(s1["loss"] - s2["loss"]) <= LOSS_TOL, (s1["loss"], s2["loss"])
        assert s1["responses"] == s2["responses"] == 32
        assert s1["tokens"] == s2["tokens"]
        assert abs(s1["grad_norm"] - s2["grad_norm"]) <= 1e-5 * max(1.0, s1["grad_norm"])
        _same_gauges(s1, s2)
    # Gauges on step 2 only (gauges_every=2).
    assert not set(GAUGE_KEYS) & one["stats"][0].keys() and set(GAUGE_KEYS) <= one["stats"][1].keys()
    assert one["state"].keys() == two["state"].keys()
    moved = 0.0
    for name, w1 in one["state"].items():
        w2 = two["state"][name]
        assert (w1 - w2).abs().max().item() <= WEIGHT_TOL, name
        moved = max(moved, (w1 - runs[0]["initial"][name]).abs().max().item())
    assert moved > 20 * WEIGHT_TOL  # two Adam steps at lr 1e-3 move weights far beyond the tolerance


def _same_gauges(s1: dict, s2: dict) -> None:
    """The update gauges and the per-staleness balance gauges agree between world sizes."""
    assert s1.keys() & set(GAUGE_KEYS) == s2.keys() & set(GAUGE_KEYS)
    for key in s1.keys() & set(GAUGE_KEYS):
        assert s2[key] == pytest.approx(s1[key], rel=1e-4, abs=1e-7), key
    assert s1["by_staleness"].keys() == s2["by_staleness"].keys() == {"0", "1", "2"}
    for k, b1 in s1["by_staleness"].items():
        b2 = s2["by_staleness"][k]
        assert b1["responses"] == b2["responses"]
        for key in ("delta", "R", "S_pos", "S_neg"):
            assert b2[key] == pytest.approx(b1[key], rel=1e-5, abs=1e-7), (k, key)
