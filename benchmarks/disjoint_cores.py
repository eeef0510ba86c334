"""Asynchrony on separate cores: the pipeline's samples/s at max_staleness 0, 2 and 4, in one run.

Rollout (the vLLM pod and the reward service) is pinned to some CPUs and the learner to the others
(`asympo up --cpus`), as generation and training run on separate GPU pools in a cluster; Redis and the
gateway run wherever the OS puts them. At `max_staleness: 0` the two sides take turns: no prompt of a
step is dispatched before the previous step's version is out, so the pod idles while the learner
trains and the learner idles while the pod generates. A staleness bound of k lets the pod generate up to
k versions ahead, so both sides work at once. The same job runs at each bound, one after the other, in
one stack per bound (fresh Redis and pods, nothing carried over).

Throughput is measured over the steps (first step to last), so the engines' start-up, paid once per
job, does not blur the comparison; the job's own summary figure (from its step-0 record) is kept too.
Overlap can at best turn the serial step at the first bound into the busier side's share of it: the
result also gives both sides' busy time per step (from the step timeline) and that bound, so a speedup
below 2 can be told apart as imbalance (one side has less work) or as lost overlap.

    python benchmarks/disjoint_cores.py [--job examples/jobs/arith-tiny.yaml] [--steps 120]
        [--staleness 0,2,4] [--rollout-cpus 0] [--learner-cpus 1] [--repeats 3]
        [--out benchmarks/results/disjoint_cores.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import machine, write_result  # noqa: E402
from stack_job import REPO, run_to_end, stack_up  # noqa: E402

from asympo.jobs.spec import JobSpec  # noqa: E402
from asympo.runtime.ports import free_port  # noqa: E402


def steady_samples_per_s(records: list[dict]) -> tuple[float, float]:
    """(samples/s, seconds per step) from the first trained step's record to the last one's."""
    steps = [r for r in records if r.get("prompt_ids") is not None and not r.get("final")]
    span = steps[-1]["time"] - steps[0]["time"]
    responses = sum(r["responses"] for r in steps[1:])
    return responses / span, span / (len(steps) - 1)


def _busy(run: dict, side: str) -> float:
    """Seconds per step one side worked, from the run's timeline medians (waiting excluded)."""
    t = run["timeline_medians"] or {}
    if side == "pods":
        return sum((t.get("pods") or {}).get(k, 0.0) for k in ("reload", "generate", "score", "publish"))
    critical = t.get("critical") or {}
    return (
        critical.get("train", 0.0) + critical.get("snapshot", 0.0) + sum((t.get("background") or {}).values())
    )


def run_one(spec, staleness: int, args, work: Path) -> dict:
    """The job at one staleness bound in a fresh pinned stack."""
    home = work / f"home-s{staleness}"
    spec = spec.model_copy(deep=True)
    spec.algorithm.max_staleness = staleness
    pinned = []
    for service, cpus in (("rollout", args.rollout_cpus), ("reward", args.rollout_cpus),
                          ("learner", args.learner_cpus)):  # fmt: skip
        pinned += ["--cpus", f"{service}={cpus}"]
    with stack_up(home, free_port(), args.engine, args.cache, *pinned) as (_, client):
        job, records, summary = run_to_end(client, spec, poll_s=5.0)
    per_s, step_s = steady_samples_per_s(records)
    hist = summary["staleness_histogram"]
    print(f"max_staleness {staleness}: {per_s:.0f} samples/s over the steps, {step_s * 1000:.0f} ms/step, "
          f"staleness {hist}", file=sys.stderr)  # fmt: skip
    return {
        "max_staleness": staleness,
        "samples_per_s": per_s,
        "seconds_per_step": step_s,
        "job_samples_per_s": summary["samples_per_s"],
        "final_accuracy": summary["final_accuracy"],
        "staleness_histogram": hist,
        "timeline_medians": summary.get("timeline_medians"),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the job at every staleness bound on pinned cores; write and return the result."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default=str(REPO / "examples/jobs/arith-tiny.yaml"))
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--staleness", default="0,2,4")
    p.add_argument("--rollout-cpus", default="0")
    p.add_argument("--learner-cpus", default="1")
    p.add_argument("--engine", default="auto")
    p.add_argument(
        "--cache", type=Path, default=None, help="model cache shared by the runs (default: a temp dir)"
    )
    p.add_argument("--repeats", type=int, default=3, help="rounds over the bounds; figures are medians")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/disjoint_cores.json")
    args = p.parse_args(argv)
    spec = JobSpec.load(args.job)
    spec.algorithm.steps = args.steps
    spec.eval.every = args.steps  # only before and after: evaluation is pod work neither bound is about
    spec.eval.gauges_every = 0  # the update gauges cost an extra pass on their steps: measured apart
    bounds = [int(k) for k in args.staleness.split(",")]
    with tempfile.TemporaryDirectory(prefix="asympo-disjoint-") as tmp:
        work = Path(tmp)
        args.cache = args.cache or work / "cache"
        # Rounds, each over every bound: a machine that slows down meanwhile slows every bound alike.
        rounds = [[run_one(spec, k, args, work) for k in bounds] for _ in range(args.repeats)]
    speedups = {
        str(k): statistics.median(r[i]["samples_per_s"] / r[0]["samples_per_s"] for r in rounds)
        for i, k in enumerate(bounds)
    }
    # What overlap can buy at best: the serial step at the first bound over the busier side's share of it.
    learner_busy = statistics.median(_busy(r[0], "learner") for r in rounds)
    pod_busy = statistics.median(_busy(r[0], "pods") for r in rounds)
    serial_s = statistics.median(r[0]["seconds_per_step"] for r in rounds)
    result = {
        "benchmark": "disjoint_cores",
        "command": " ".join(
            ["python", "benchmarks/disjoint_cores.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine(affinity=sorted(os.sched_getaffinity(0))),
        "job": spec.name,
        "steps": args.steps,
        "rollout_cpus": args.rollout_cpus,
        "learner_cpus": args.learner_cpus,
        "rounds": rounds,
        "samples_per_s_median": {
            str(k): statistics.median(r[i]["samples_per_s"] for r in rounds) for i, k in enumerate(bounds)
        },
        "speedup_vs_first_median": speedups,
        "learner_busy_seconds_per_step": learner_busy,
        "pod_busy_seconds_per_step": pod_busy,
        "ideal_speedup": serial_s / max(learner_busy, pod_busy, 1e-9),
    }
    write_result(result, args.out)
    shown = " ".join(f"staleness {k}: ×{v:.2f}" for k, v in speedups.items())
    print(f"medians of {args.repeats}: {shown} (at best ×{result['ideal_speedup']:.2f}: learner busy "
          f"{learner_busy * 1000:.0f} ms, pods {pod_busy * 1000:.0f} ms of a {serial_s * 1000:.0f} ms serial step)",
          file=sys.stderr)  # fmt: skip
    return result


if __name__ == "__main__":
    main()
