"""The benchmarks run end to end (small sizes) and write the JSON their docs promise."""

import json
import subprocess
import sys

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow


def _run(script, *args, out, timeout_s=600):
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *map(str, args), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_bus_benchmark(tmp_path):
    result = _run("bus.py", "--groups", 64, "--repeats", 1, out=tmp_path / "bus.json")
    assert result["payload_bytes"] > 20_000  # G = 8 completions of 512 tokens
    assert result["bus_groups_per_s_median"] > 0 and result["raw_groups_per_s_median"] > 0
    assert result["ratio_bus_to_raw"] == pytest.approx(
        result["bus_groups_per_s_median"] / result["raw_groups_per_s_median"]
    )


def test_reward_benchmark(tmp_path):
    result = _run("reward.py", "--items", 60, "--repeats", 1, "--workers", 1, out=tmp_path / "reward.json")
    text = json.dumps(result)
    assert "ratio" in text and result["items"] == 60


def test_rollout_benchmark(tmp_path, tiny_cache, tiny_model_path):
    result = _run(
        "rollout.py",
        "--model-cache",
        tiny_cache,
        "--engine",
        "hf",
        "--prompts",
        8,
        "--batch",
        4,
        "--reloads",
        1,
        out=tmp_path / "rollout.json",
    )
    assert result["service"]["tokens"] > 0 and result["engine_direct"]["tokens"] > 0
    assert result["ratio_service_to_direct"] > 0 and result["final_served_version"] == 1
    assert result["reload_seconds_median"] > 0


def test_learner_benchmark(tmp_path):
    result = _run(
        "learner.py", "--hidden", 64, "--layers", 1, "--prompts", 4, "--group", 4, "--response", 16,
        "--steps", 1, "--publishes", 1, out=tmp_path / "learner.json",
    )  # fmt: skip
    training, publish = result["training"], result["publish"]
    assert training["tokens_per_step"] > 0 and training["ratio_learner_to_plain"] > 0
    assert publish["version_bytes"] > 0 and publish["ratio_publish_to_copy"] > 0


def test_real_model_benchmark(tmp_path, tiny_cache, tiny_model_path):
    """The real-model benchmark's three parts, run here on the tiny job and the hf engine to stay quick."""
    from asympo.runtime.ports import free_port

    result = _run(
        "real_model.py", "--job", "examples/jobs/arith-tiny.yaml", "--engine", "hf", "--steps", 2, "--prompts", 4,
        "--reloads", 1, "--train-steps", 1, "--gateway-port", free_port(), "--model-cache", tiny_cache,
        out=tmp_path / "real.json", timeout_s=900,
    )  # fmt: skip
    split = result["job"]["step_split_seconds"]
    assert set(split) == {"generate", "score", "train", "publish", "reload"} and all(
        v > 0 for v in split.values()
    )
    assert result["job"]["samples_per_s"] > 0 and result["job"]["steps"] == 2
    assert (
        result["generation"]["ratio_pod_to_direct"] > 0 and result["training"]["ratio_learner_to_plain"] > 0
    )
    assert (tmp_path / "real.png").stat().st_size > 5_000


def test_peer_trl_benchmark(tmp_path, tiny_cache, tiny_model_path):
    """TRL, the reference loop and the stack each train the tiny job 3 steps: equal samples, consistent figures."""
    result = _run("peer_trl.py", "--steps", 3, "--model-cache", tiny_cache, out=tmp_path / "peer.json")
    systems = result["systems"]
    assert list(systems) == ["trl", "reference", "pipeline"]
    assert result["samples_per_step"] == 128 and result["samples_per_run"] == 3 * 128
    assert {f["samples"] for f in systems.values()} == {3 * 128}
    for f in systems.values():
        assert f["samples_per_s"] > 0 and f["samples_per_s"] == pytest.approx(
            f["samples"] / f["wall_seconds"]
        )
        assert 0 <= f["initial_accuracy"] <= 1 and 0 <= f["final_accuracy"] <= 1
    # Both in-process systems evaluate the same base model with the same code.
    assert systems["trl"]["initial_accuracy"] == systems["reference"]["initial_accuracy"]
    assert systems["trl"]["runs"]["0"]["optimizer_steps"] == 3
    assert set(result["ratios"]) == {"pipeline/trl", "pipeline/reference", "reference/trl"}
    for pair, ratio in result["ratios"].items():
        a, b = pair.split("/")
        assert ratio == pytest.approx(systems[a]["samples_per_s"] / systems[b]["samples_per_s"])
    # CPU is measured, not the wall clock renamed: the stack's comes from its processes, by part.
    parts = systems["pipeline"]["runs"]["0"]["cpu_seconds_by_part"]
    assert parts["learner"] > 0 and parts["rollout"] > 0 and "redis" in parts, parts
    assert systems["pipeline"]["cpu_seconds"] == pytest.approx(sum(parts.values()))
    for f in systems.values():
        assert f["cpu_seconds"] > 0 and f["cpu_ms_per_step"] == pytest.approx(1000 * f["cpu_seconds"] / 3)
    assert (tmp_path / "peer.png").stat().st_size > 5_000


def test_weight_path_and_fanout_benchmarks(tmp_path):
    """A 20 MB version through every path, then the fan-out model fed with it and a small loopback fetch."""
    path = _run("weight_path.py", "--gb", 0.02, "--repeats", 1, out=tmp_path / "wp.json")
    med = path["median_seconds"]
    assert 10e6 < path["version_bytes"] < 40e6 and med["copy"] > 0 and med["reload_fetch"] > 0
    assert tuple(med["publish_phases"]) == ("save", "hash", "probes", "fsync", "rename", "gc")
    assert set(med["shared_phases"]) == set(med["fetch_phases"]) == {"fetch", "verify", "load"}
    ratios = path["ratios_to_plain_copy"]
    assert ratios["shared_store"] == pytest.approx((med["publish"] + med["reload_shared"]) / med["copy"])
    assert path["goal"]["met"] == (ratios["shared_store"] <= 1.5)
    assert (tmp_path / "wp.png").stat().st_size > 5_000
    fanout = _run(
        "weight_fanout.py", "--weight-path", tmp_path / "wp.json", "--fetchers", 1, 2, "--measure-mb", 8,
        "--repeats", 1, out=tmp_path / "fanout.json",
    )  # fmt: skip
    assert set(fanout["inputs"]["loopback"]["fetchers"]) == {"1", "2"}
    assert set(fanout["simulated"]) == {"25", "100", "200"}
    for sim in fanout["simulated"].values():
        methods = sim["methods"]
        assert len(methods) == 5 and all(m["seconds"] > 0 for m in methods.values())
        assert methods["learner fan-out (FetchWeights)"]["learner_egress_gb"] == pytest.approx(16 * 3.4)
    assert (tmp_path / "fanout.png").stat().st_size > 5_000
