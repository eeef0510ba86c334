"""Reward items/s through the reward service (gRPC on loopback, `math` verifier) vs the same verifier
called in-process, on the same items, in the same run.

The service runs as `python -m services.reward` in a subprocess with its worker pool; a few client
threads send batches of 8-64 items each. The in-process side calls the verifier in a loop in this
process, one item after another, as a trainer without the service would. Both sides first score the
items once to warm up (imports, parser caches), then alternate for `--repeats` rounds; the medians and
their ratio are written as JSON.

    python benchmarks/reward.py [--items 1000] [--clients 4] [--workers N] [--repeats 5] [--out benchmarks/results/reward.json]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

from results_io import machine, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `services` importable
    sys.path.insert(0, str(REPO))

from asympo.runtime.grpc_auth import GRPC_TOKEN_ENV  # noqa: E402
from services.reward.client import RewardClient  # noqa: E402

FILLER = [
    "Let us first restate the problem in our own words.",
    "We expand the product and collect like terms.",
    "Substituting $x = {a}$ gives ${a}^2 + {b} = {c}$.",
    "By the triangle inequality, $|u + v| \\le |u| + |v|$.",
    "Note that ${a} \\times {b} = {d}$, which we will need later.",
    "Dividing both sides by ${b}$ we obtain $\\frac{{{d}}}{{{b}}} = {a}$.",
    "Hence the sequence is increasing for $n \\ge {a}$.",
    "We check the boundary case separately.",
]


def answer_pair(rng: random.Random) -> tuple[str, str, str]:
    """(answer as the model writes it, reference as a dataset stores it, an equally valid wrong answer)."""
    a, b = rng.randint(1, 40), rng.randint(2, 12)
    kind = rng.choice(["int", "int", "frac", "decimal", "sqrt", "poly", "interval", "neg"])
    if kind == "int":
        return str(a * b), str(a * b), str(a * b + 1)
    if kind == "frac":
        return f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\frac{{{a + 1}}}{{{b}}}"
    if kind == "decimal":
        return f"\\frac{{{a}}}{{4}}", str(a / 4), f"{a / 4 + 0.5}"
    if kind == "sqrt":
        return f"\\frac{{\\sqrt{{{b}}}}}{{{a}}}", f"\\sqrt{{{b}}}/{a}", f"\\frac{{\\sqrt{{{b + 1}}}}}{{{a}}}"
    if kind == "poly":
        return f"{b}x + {a * b}", f"{b}(x + {a})", f"{b}x + {a}"
    if kind == "interval":
        return f"({a}, {a + b}]", f"({a},{a + b}]", f"[{a}, {a + b}]"
    return f"-{a}", f"-{a}", str(a)


def completion(rng: random.Random) -> tuple[str, str]:
    """A (completion, reference) pair shaped like a math rollout: reasoning, then an answer or not."""
    said, reference, wrong = answer_pair(rng)
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    steps = " ".join(
        rng.choice(FILLER).format(a=a, b=b, c=a * a + b, d=a * b) for _ in range(rng.randint(3, 20))
    )
    ending = rng.random()
    if ending < 0.5:
        text = f"{steps} Therefore the answer is $\\boxed{{{said}}}$."
    elif ending < 0.75:
        text = f"{steps} So the final answer is $\\boxed{{{wrong}}}$."
    elif ending < 0.85:
        text = f"{steps} The answer is ${said}$."
    else:
        text = steps[: rng.randint(20, max(21, len(steps)))]  # truncated: no final answer
    return text, reference


def make_batches(n: int, rng: random.Random) -> list[list[tuple[str, str]]]:
    """n items cut into batches of 8-64."""
    items = [completion(rng) for _ in range(n)]
    out, i = [], 0
    while i < n:
        size = rng.choice([8, 16, 32, 64])
        out.append(items[i : i + size])
        i += size
    return out


def in_process(items: list[tuple[str, str]]) -> tuple[float, Counter]:
    """Items/s calling the `math` verifier directly, one item after another, and the status counts."""
    from services.reward.verifiers import resolve

    verifier = resolve("math")
    t0 = time.perf_counter()
    statuses = Counter(verifier(c, r).status for c, r in items)
    return len(items) / (time.perf_counter() - t0), statuses


def through_grpc(target: str, batches: list[list[tuple[str, str]]], clients: int) -> tuple[float, Counter]:
    """Items/s with `clients` threads, each with its own channel, taking batches from a shared queue."""
    work: queue.Queue = queue.Queue()
    for b in batches:
        work.put(b)
    statuses: Counter = Counter()
    lock = threading.Lock()

    def run_client() -> None:
        with RewardClient(target) as c:
            while True:
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                results = c.score("math", [x for x, _ in batch], [r for _, r in batch], deadline_s=10)
                with lock:
                    statuses.update(r.status for r in results)

    n = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(run_client) for _ in range(clients)]:
            f.result()
    return n / (time.perf_counter() - t0), statuses


def start_service(workers: int) -> tuple[subprocess.Popen, str]:
    """`python -m services.reward` on a free loopback port; returns it once it logs that it is serving."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.reward", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
         "--workers", str(workers)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        record = json.loads(line)
        if record.get("msg") == "serving":
            # Keep draining stdout so the service never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"127.0.0.1:{record['port']}"
    raise RuntimeError("the reward service exited before serving")


def main(argv: list[str] | None = None) -> dict:
    """Run both sides `repeats` times, alternating, and write the medians and their ratio."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--workers", type=int, default=cpus, help="service worker processes (default: cores)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reward.json")
    args = p.parse_args(argv)

    batches = make_batches(args.items, random.Random(args.seed))
    items = [x for b in batches for x in b]
    # The service refuses to start without a gRPC token; it and the clients read this one.
    os.environ.setdefault(GRPC_TOKEN_ENV, secrets.token_urlsafe(24))
    proc, target = start_service(args.workers)
    try:
        in_process(items)  # warm-up: imports, math-verify's parser, the reference cache
        through_grpc(target, batches, args.clients)
        grpc_rates, local_rates = [], []
        for _ in range(args.repeats):
            rate, grpc_statuses = through_grpc(target, batches, args.clients)
            grpc_rates.append(rate)
            rate, local_statuses = in_process(items)
            local_rates.append(rate)
    finally:
        proc.terminate()
        proc.wait(30)
    if grpc_statuses != local_statuses:
        raise RuntimeError(
            f"the two sides disagree: gRPC {dict(grpc_statuses)} vs in-process {dict(local_statuses)}"
        )

    result = {
        "benchmark": "reward items/s: gRPC RewardService (math verifier) vs the verifier in-process",
        "command": " ".join(["python benchmarks/reward.py", *(argv if argv is not None else sys.argv[1:])]),
        "items": len(items),
        "batches": len(batches),
        "batch_sizes": sorted(Counter(len(b) for b in batches).items()),
        "mean_completion_chars": round(statistics.mean(len(c) for c, _ in items)),
        "statuses": dict(local_statuses),
        "clients": args.clients,
        "workers": args.workers,
        "repeats": args.repeats,
        "grpc_items_per_s": grpc_rates,
        "inprocess_items_per_s": local_rates,
        "grpc_items_per_s_median": statistics.median(grpc_rates),
        "inprocess_items_per_s_median": statistics.median(local_rates),
        "ratio_grpc_to_inprocess": statistics.median(grpc_rates) / statistics.median(local_rates),
        # Each worker against one in-process loop: what the service keeps of a core it is given.
        "ratio_per_worker": statistics.median(grpc_rates) / statistics.median(local_rates) / args.workers,
        "machine": machine(
            cpus=cpus, versions={pkg: version(pkg) for pkg in ("grpcio", "protobuf", "math-verify", "sympy")}
        ),
    }
    write_result(result, args.out)
    print(
        f"gRPC {result['grpc_items_per_s_median']:.0f} items/s ({args.workers} workers, {args.clients} clients), "
        f"in-process {result['inprocess_items_per_s_median']:.0f} items/s, "
        f"ratio {result['ratio_grpc_to_inprocess']:.2f} -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
