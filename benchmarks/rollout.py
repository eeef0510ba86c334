"""Rollout throughput and reload latency: the rollout service vs its engine called directly, same run.

1. Generated tokens/s for the same PromptTasks (same model, prompts, G, sampling, batch size): the
   engine called in-process, then a real rollout pod (Redis, reward service, gRPC) end to end.
2. Hot-reload latency as the pod logs it (fetch/verify sha256 + engine reload + head and probe checks +
   prefix cache reset), against reading the same version's bytes from disk.

The job file gives the model, the prompts (template, chat format), the verifier and the sampling: the
tiny model by default, `--job examples/jobs/smollm2-arith.yaml` for SmolLM2-135M-Instruct.

    python benchmarks/rollout.py [--job JOB.yaml] [--engine vllm] [--prompts 256] [--reloads 5]
                                 [--out benchmarks/results/rollout.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import machine, write_result  # noqa: E402

from asympo.bus import JobKeys, connect, dispatch, publish  # noqa: E402
from asympo.bus.local_redis import start_redis  # noqa: E402
from asympo.jobs.records import JobRecord, list_pods, put_job  # noqa: E402
from asympo.jobs.spec import JobSpec  # noqa: E402
from asympo.models.loading import load_policy, resolve_model_path  # noqa: E402
from asympo.models.prompts import Prompter  # noqa: E402
from asympo.proto.v1 import bus_pb2  # noqa: E402
from asympo.tasks import build_task  # noqa: E402
from asympo.weights.store import write_version  # noqa: E402
from services.rollout.engines import GenRequest, make_engine  # noqa: E402
from tests.support.service_process import ServiceProcess  # noqa: E402


def make_tasks(job_id, spec, prompter, problems, group_size, max_new_tokens):
    """PromptTasks for the problems as the job's dispatcher makes them, seeded per prompt."""
    return [
        bus_pb2.PromptTask(
            job_id=job_id,
            prompt_id=f"p{i}",
            prompt=p.prompt,
            prompt_token_ids=prompter.ids(p.prompt),
            reference=p.reference,
            group_size=group_size,
            verifier=spec.verifier,
            sampling=bus_pb2.SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=spec.sampling.temperature,
                top_p=1.0,
                seed=i,
                stop_token_ids=prompter.stop_ids,
            ),
        )  # fmt: skip
        for i, p in enumerate(problems)
    ]


def direct(engine_kind, model_dir, tasks, batch) -> dict:
    """Tokens/s of the engine alone on the same requests, in batches of `batch` prompts."""
    engine = make_engine(engine_kind, model_dir)
    requests = [
        GenRequest(
            list(t.prompt_token_ids),
            t.group_size,
            t.sampling.max_new_tokens,
            t.sampling.temperature,
            1.0,
            t.sampling.seed,
            stop_token_ids=tuple(t.sampling.stop_token_ids),
        )  # fmt: skip
        for t in tasks
    ]
    engine.generate(requests[:batch])  # warm-up, as the pod's first batch would be
    t0 = time.perf_counter()
    tokens = 0
    for start in range(0, len(requests), batch):
        tokens += sum(len(s.token_ids) for g in engine.generate(requests[start : start + batch]) for s in g)
    seconds = time.perf_counter() - t0
    engine.close()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


async def _wait_groups(url, keys, expected, timeout_s=600):
    client = connect(url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await client.xlen(keys.groups) >= expected:
                entries = await client.xrange(keys.groups)
                return [bus_pb2.ScoredGroup.FromString(f[b"pb"]) for _, f in entries]
            await asyncio.sleep(0.05)
        raise TimeoutError(f"groups did not arrive within {timeout_s} s")
    finally:
        await client.aclose()


async def _call(url, fn):
    client = connect(url)
    try:
        return await fn(client)
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> dict:
    """Measure both comparisons and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", type=Path, default=REPO / "examples" / "jobs" / "arith-tiny.yaml")
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--model-cache", type=Path, default=None, help="model cache (tiny and gguf: models)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the job's")
    p.add_argument("--reloads", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rollout.json")
    args = p.parse_args(argv)

    # Versions, checkpoints and engine caches take gigabytes: nothing stays behind in /tmp.
    with tempfile.TemporaryDirectory(prefix="asympo-bench-rollout-") as work:
        return measure(args, argv, Path(work))


def measure(args: argparse.Namespace, argv: list[str] | None, work: Path) -> dict:
    """Run the benchmark with its scratch files under work."""
    spec = JobSpec.load(args.job)
    args.max_new_tokens = args.max_new_tokens or spec.sampling.max_new_tokens
    model_dir = resolve_model_path(spec, args.model_cache, progress=False)
    model, tokenizer = load_policy(str(model_dir))
    prompter = Prompter.for_model(tokenizer, model_dir, spec.task)
    task = build_task(spec.task)
    stream = task.train_stream(seed=1)
    problems = [next(stream) for _ in range(args.prompts)]
    job_id = "bench-rollout"
    tasks = make_tasks(job_id, spec, prompter, problems, args.group_size, args.max_new_tokens)

    engine_result = direct(args.engine, model_dir, tasks, args.batch)

    keys = JobKeys(job_id)
    with start_redis(work / "redis") as redis_server:
        url = redis_server.url
        store = work / "store"
        asyncio.run(_call(url, lambda c: put_job(c, JobRecord(job_id=job_id, spec=spec, state="running"))))
        pv, _ = write_version(store, job_id, 0, 0, model, tokenizer)
        asyncio.run(_call(url, lambda c: publish(c, keys.policy, [pv])))
        reward = ServiceProcess("services.reward", "--workers", "1")
        pod = ServiceProcess(
            "services.rollout", "--engine", args.engine, "--pod", "bench", "--job-id", job_id, "--redis-url", url,
            "--reward-target", reward.target, "--poll-s", "0.2", "--batch-prompts", str(args.batch),
            "--weights-dir", str(work / "fetched"),
        )  # fmt: skip
        try:
            pod.wait_for_log("engine started", timeout_s=300)
            # Warm-up batch, then the timed run on the same tasks under fresh ids.
            warm = make_tasks(
                job_id, spec, prompter, problems[: args.batch], args.group_size, args.max_new_tokens
            )
            for t in warm:
                t.prompt_id = "warm-" + t.prompt_id
            asyncio.run(_call(url, lambda c: dispatch(c, keys, warm)))
            asyncio.run(_wait_groups(url, keys, len(warm)))
            t0 = time.perf_counter()
            asyncio.run(_call(url, lambda c: dispatch(c, keys, tasks)))
            groups = asyncio.run(_wait_groups(url, keys, len(warm) + len(tasks)))
            seconds = time.perf_counter() - t0
            timed = [g for g in groups if not g.prompt_id.startswith("warm-")]
            tokens = sum(len(c.token_ids) for g in timed for c in g.completions)
            service_result = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}

            reloads, reads = [], []
            for v in range(1, args.reloads + 1):
                with torch.no_grad():  # a new version: every weight moves a little, as after a step
                    for param in model.parameters():
                        param.add_(1e-5 * torch.randn_like(param))
                pv, path = write_version(store, job_id, v, v, model, tokenizer, keep=args.reloads + 2)
                t_read = time.perf_counter()
                for f in sorted(path.iterdir()):
                    f.read_bytes()
                reads.append(time.perf_counter() - t_read)
                asyncio.run(_call(url, lambda c, pv=pv: publish(c, keys.policy, [pv])))
                record = pod.wait_for_log("policy reloaded", timeout_s=120, version=v)
                reloads.append(record["seconds"])
            served = asyncio.run(_call(url, lambda c: list_pods(c, job_id)))[0].served_version
        finally:
            pod.stop()
            reward.stop()
    version_bytes = sum(f.stat().st_size for f in path.iterdir())
    result = {
        "benchmark": "rollout service vs engine direct; reload latency vs disk read",
        "command": " ".join(["python benchmarks/rollout.py", *(argv if argv is not None else sys.argv[1:])]),
        "job": str(args.job.relative_to(REPO) if args.job.is_relative_to(REPO) else args.job),
        "model": spec.model.path,
        "engine": args.engine,
        "prompts": args.prompts,
        "group_size": args.group_size,
        "batch_prompts": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "engine_direct": engine_result,
        "service": service_result,
        "ratio_service_to_direct": service_result["tokens_per_s"] / engine_result["tokens_per_s"],
        "version_bytes": version_bytes,
        "reload_seconds": reloads,
        "disk_read_seconds": reads,
        "reload_seconds_median": statistics.median(reloads),
        "disk_read_seconds_median": statistics.median(reads),
        "ratio_reload_to_disk_read": statistics.median(reloads) / statistics.median(reads),
        "final_served_version": served,
        "machine": machine(),
    }
    write_result(result, args.out)
    print(
        f"{args.engine}: service {service_result['tokens_per_s']:.0f} tok/s vs engine direct "
        f"{engine_result['tokens_per_s']:.0f} tok/s (ratio {result['ratio_service_to_direct']:.2f}); reload "
        f"{result['reload_seconds_median'] * 1000:.1f} ms vs disk read {result['disk_read_seconds_median'] * 1000:.2f} ms "
        f"of {version_bytes / 1e6:.1f} MB -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
