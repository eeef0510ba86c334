"""asympo against TRL's GRPOTrainer: samples/s and held-out accuracy at equal samples, same job, same cores.

Three systems train the same job one after the other in one invocation: the same base model directory
(`asympo.models.loading.resolve_model_path`; the tiny model is built once into the model cache and shared),
the same prompts in the same order (the task's training stream for the job's seed, rendered by asympo's
Prompter; TRL's tokenization is checked to give the same ids), the same verifier (`exact` as the reference
loop runs it, `asympo.tasks.exact_match`; any other, e.g. `math`, is the reward service's own function,
in-process), G, prompts per step, temperature, top-p, max new tokens, lr, weight decay, grad clip, steps:

- `trl`: TRL 1.16's `GRPOTrainer` in this process (transformers `generate`, then its loss; no KL: beta 0,
  num_iterations 1, float32 without gradient checkpointing, constant lr, torch's AdamW like asympo's rather
  than the fused default, no evaluation, no saving; TRL defaults to bf16 and gradient checkpointing).
  Its batch sizes count completions, not prompts, and `steps_per_generation` defaults to
  `gradient_accumulation_steps`, so per_device_train_batch_size × gradient_accumulation_steps =
  prompts_per_step × G makes one generation batch of prompts_per_step prompts × G completions per
  optimizer step (128 for arith-tiny). `--trl-micro-batch M` splits it into M-completion passes.
  Timed: `trainer.train()` alone, with the model loaded and the trainer built; samples = completions its
  reward function scored (= steps × prompts_per_step × G). TRL's own `train_samples_per_second` is kept
  beside it.
- `reference`: `asympo.reference.loop.run_reference`. Timed: the sum of its steps' seconds (generate,
  score, update), so that, as for TRL, loading the model and evaluating are left out; its whole run is
  recorded as `seconds_whole_run`.
- `pipeline`: the real stack as benchmarks/real_model.py runs it (`asympo up` in a private home, the job
  over REST, `asympo down`; `--engine` is the pod's). Timed as the job summary does: responses trained /
  wall from the step-0 record to the last step. The stack's start-up is not in it, the pod's engine
  start for the job's model (during the first step) is; `samples_per_s_after_step_1` leaves that out.
  The whole summary is kept (its other throughputs, staleness, drops).

What still differs, by design: each system trains with its own algorithm, TRL's default loss (`dapo`,
rewards scaled by the group's std, on-policy) against the job's (`asympo` on samples up to max_staleness
versions old). TRL computes log-probs through its "fused LM head", which off Triton (so on CPU) projects
every position of prompt and completion, not only the completion's; and transformers' Trainer exempts
biases and norms from weight decay.

Evaluation (held-out greedy accuracy with the job's verifier): TRL's model before and after training with
asympo's `greedy_accuracy`, outside the timer; the reference loop and the stack evaluate as they always
do, but only before the first and after the last step (`eval.every` = steps, `checkpoint.every` = 0 for
both), because TRL evaluates and saves nothing while it is timed.

CPU (`cpu_seconds`, `cpu_ms_per_step`): what each whole run cost the machine, user + system time of every
thread (TRL and the reference loop: this process, model load and evaluations included; the stack: every
process of it, services, the pod's vLLM engine and Redis, from the job's submission to its end, by part
in `cpu_seconds_by_part`). On a machine that every system has to itself, samples/s can at best reach
cores × 1000 / CPU ms per step × samples per step, however a system overlaps its work.

    python benchmarks/peer_trl.py [--systems trl,reference,pipeline] [--seeds 0] [--steps N]
        [--job examples/jobs/arith-tiny.yaml] [--out benchmarks/results/peer_trl.json]
    python benchmarks/peer_trl.py --job examples/jobs/smollm2-arith.yaml --steps 2 --out /tmp/peer_smollm2.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# asympo before torch: it sets OMP_WAIT_POLICY=PASSIVE, which both in-process systems then share.
from asympo.jobs.spec import JobSpec  # noqa: E402
from asympo.models.tiny import default_cache_dir  # noqa: E402
from asympo.runtime.ports import free_port  # noqa: E402
from benchmarks.peer_trl_systems import run_pipeline, run_reference_system, run_trl  # noqa: E402
from benchmarks.results_io import machine, write_result  # noqa: E402

SYSTEMS = ("trl", "reference", "pipeline")
RATIOS = (("pipeline", "trl"), ("pipeline", "reference"), ("reference", "trl"))
FIGURES = ("samples", "wall_seconds", "samples_per_s", "initial_accuracy", "final_accuracy", "cpu_seconds")
COLORS = {"trl": "tab:orange", "reference": "tab:blue", "pipeline": "tab:green"}


def job_spec(path: Path, steps: int | None, seed: int) -> JobSpec:
    """The job as every system runs it: its steps and seed, evaluated only at both ends, no checkpoints
    and no update gauges (TRL computes neither)."""
    spec = JobSpec.load(path)
    steps = steps or spec.algorithm.steps
    return spec.with_overrides(
        {
            "algorithm.steps": steps,
            "seed": seed,
            "eval.every": steps,
            "eval.gauges_every": 0,
            "checkpoint.every": 0,
        }
    )


def run_system(name: str, spec: JobSpec, args: argparse.Namespace, work: Path) -> dict:
    """One system on one seed; its figures."""
    if name == "pipeline":
        return run_pipeline(
            spec, args.model_cache, work / f"home-{spec.seed}", args.gateway_port, args.engine
        )
    cpu = time.process_time()  # every thread of this process: TRL and the reference loop run in it
    if name == "trl":
        figures = run_trl(spec, args.model_cache, work, args.trl_micro_batch)
    else:
        figures = run_reference_system(spec, args.model_cache)
    return {**figures, "cpu_seconds": time.process_time() - cpu}


def combine(runs: dict[int, dict]) -> dict:
    """A system's headline figures: the mean over seeds of each run's (None where a run has none)."""
    out = {}
    for key in FIGURES:
        values = [r[key] for r in runs.values() if r.get(key) is not None]
        out[key] = statistics.fmean(values) if len(values) == len(runs) else None
    if isinstance(out["samples"], float) and out["samples"].is_integer():
        out["samples"] = int(out["samples"])
    return {**out, "runs": {str(seed): r for seed, r in runs.items()}}


def ratios(systems: dict[str, dict]) -> dict[str, float]:
    """samples/s of one system over another's, for every pair that ran."""
    return {
        f"{a}/{b}": systems[a]["samples_per_s"] / systems[b]["samples_per_s"]
        for a, b in RATIOS
        if a in systems and b in systems
    }


def plot(result: dict, path: Path) -> None:
    """Samples/s and held-out accuracy (before and after) per system, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["systems"])
    figs = [result["systems"][n] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    rates = [f["samples_per_s"] for f in figs]
    bars = left.bar(names, rates, color=[COLORS[n] for n in names])
    left.bar_label(bars, fmt="%.0f" if max(rates) >= 10 else "%.2f", fontsize=8)
    left.set_ylim(0, max(rates) * 1.12)
    left.set_ylabel("samples trained / s")
    left.set_title("throughput (higher is better)", fontsize=9)
    x = range(len(names))
    initial = [f["initial_accuracy"] if f["initial_accuracy"] is not None else 0.0 for f in figs]
    right.bar([i - 0.2 for i in x], initial, width=0.4, color="lightgrey", label="base model")
    bars = right.bar([i + 0.2 for i in x], [f["final_accuracy"] or 0.0 for f in figs], width=0.4,
                     color=[COLORS[n] for n in names])  # fmt: skip
    right.bar_label(bars, fmt="%.2f", fontsize=8)
    right.set_xticks(list(x), names)
    right.set_ylim(0, 1.05)
    right.set_ylabel("held-out greedy accuracy")
    right.set_title(f"after {result['samples_per_run']:,} samples", fontsize=9)
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"{result['model']}: {result['steps']} steps x {result['samples_per_step']} samples, "
        f"seed{'s' * (len(result['seeds']) > 1)} {','.join(map(str, result['seeds']))}, "
        f"{result['machine']['cpus']} CPU cores",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    """The headline figures as a small text table."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"{'system':<10} {'samples':>8} {'seconds':>9} {'s/step':>7} {'samples/s':>10} {'accuracy':>15} "
             f"{'CPU ms/step':>12}"]  # fmt: skip
    for name, f in result["systems"].items():
        acc = f"{fmt(f['initial_accuracy'], '.3f')} -> {fmt(f['final_accuracy'], '.3f')}"
        lines.append(
            f"{name:<10} {f['samples']:>8.0f} {f['wall_seconds']:>9.1f} {f['seconds_per_step']:>7.2f} "
            f"{f['samples_per_s']:>10.2f} {acc:>15} {f['cpu_ms_per_step']:>12.0f}"
        )
    lines += [f"{pair}: {value:.2f}" for pair, value in result["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the systems on every seed; write the JSON and PNG, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", type=Path, default=REPO / "examples" / "jobs" / "arith-tiny.yaml")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from " + ",".join(SYSTEMS))
    p.add_argument("--seeds", default="0", help="comma-separated job seeds")
    p.add_argument("--steps", type=int, default=None, help="default: the job's algorithm.steps")
    p.add_argument("--model-cache", type=Path, default=None, help="default $ASYMPO_CACHE_DIR/models")
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"], help="the stack's rollout engine")
    p.add_argument("--gateway-port", type=int, default=None, help="default: a free port")
    p.add_argument("--trl-micro-batch", type=int, default=None, help="completions per TRL pass (default all)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "peer_trl.json")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or set(systems) - set(SYSTEMS):
        p.error(f"--systems takes names from {','.join(SYSTEMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.model_cache = args.model_cache or default_cache_dir()
    args.gateway_port = args.gateway_port or free_port()
    t_start = time.perf_counter()
    runs: dict[str, dict[int, dict]] = {name: {} for name in systems}
    # Versions, checkpoints and engine caches take gigabytes: nothing stays behind in /tmp.
    with tempfile.TemporaryDirectory(prefix="asympo-bench-peer-") as work:
        for seed in seeds:
            spec = job_spec(args.job, args.steps, seed)
            for name in systems:
                print(f"[{name}] seed {seed}: {spec.algorithm.steps} steps ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                r = runs[name][seed] = run_system(name, spec, args, Path(work))
                print(f"[{name}] seed {seed}: done in {time.perf_counter() - t0:.0f} s: {r['samples']} samples, "
                      f"{r['samples_per_s']:.2f} samples/s, held-out {r['initial_accuracy']} -> "
                      f"{r['final_accuracy']}", file=sys.stderr, flush=True)  # fmt: skip
    algo = spec.algorithm
    combined = {name: combine(runs[name]) for name in systems}
    for figures in combined.values():
        figures["seconds_per_step"] = figures["wall_seconds"] / algo.steps
        figures["cpu_ms_per_step"] = 1000 * figures["cpu_seconds"] / algo.steps
    result = {
        "benchmark": "peer trl",
        "command": " ".join(["python benchmarks/peer_trl.py", *(argv if argv is not None else sys.argv[1:])]),
        "job": str(args.job),
        "model": spec.model.path,
        "steps": algo.steps,
        "seeds": seeds,
        "prompts_per_step": algo.prompts_per_step,
        "group_size": algo.group_size,
        "samples_per_step": algo.prompts_per_step * algo.group_size,
        "samples_per_run": algo.steps * algo.prompts_per_step * algo.group_size,
        "systems": combined,
        "ratios": ratios(combined),
        "seconds_total": time.perf_counter() - t_start,
        "machine": machine(torch=version("torch"), transformers=version("transformers"), trl=version("trl")),
    }
    write_result(result, args.out)
    plot(result, args.out.with_suffix(".png"))
    print(table(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name} in {result['seconds_total']:.0f} s")
    return result


if __name__ == "__main__":
    main()
