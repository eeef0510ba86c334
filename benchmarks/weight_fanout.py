"""Bringing one version to many pods: learner fan-out over FetchWeights, a peer relay, an NCCL broadcast.

A model (benchmarks/fanout_model.py) of 16 pods pulling one 3.4 GB version (Qwen3-1.7B in bf16) at NIC
bandwidths of 25, 100 and 200 Gb/s, fed with what this machine measures:

- the per-GB costs of publishing and loading a version, from benchmarks/results/weight_path.json;
- FetchWeights on loopback: the real learner gRPC server (token-authenticated) and 1, 4 and 16 pods
  fetching one version at once, each its own process (`materialize`'s fetch: streamed, hashed, written).
  One stream's rate is what a pod (or a relaying pod) sustains; the best total is the learner's capacity.
  Both ends share this machine's cores, so both are lower bounds for separate machines.

The NCCL broadcast is GPU-only and has not run here: its figure is the analytic time of a pipelined
broadcast at an assumed 85% of the NIC's bandwidth.

    python benchmarks/weight_fanout.py [--pods 16] [--gb 3.4] [--nics 25 100 200] [--fetchers 1 4 16]
        [--measure-mb 256] [--weight-path benchmarks/results/weight_path.json] [--out benchmarks/results/weight_fanout.json]
        [--loopback-from benchmarks/results/weight_fanout.json]   # reuse a run's loopback measurements
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `services` importable
    sys.path.insert(0, str(REPO))

from fanout_model import Rates, distribute  # noqa: E402
from results_io import machine, write_result  # noqa: E402

JOB = "fanout"


def fetch_in_process(target: str, token: str, dest: str, barrier, out) -> None:
    """A pod: wait for the others, fetch version 0, report seconds (run in its own process)."""
    from asympo.runtime.grpc_auth import ClientAuth
    from asympo.weights.transfer import fetch_version

    barrier.wait()
    t0 = time.perf_counter()
    try:
        fetch_version(target, JOB, 0, Path(dest), auth=ClientAuth(token))
        out.put(time.perf_counter() - t0)
    except Exception as exc:  # the parent reports it
        out.put(repr(exc))


def synthetic_version(store: Path, mb: int) -> int:
    """A version of `mb` MiB of random bytes (FetchWeights moves bytes; their meaning does not matter here)."""
    from asympo.weights.integrity import hash_contents
    from asympo.weights.manifest import MANIFEST, VersionManifest, manifest_text

    path = store / JOB / "v0"
    path.mkdir(parents=True)
    with (path / "model.safetensors").open("wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    (path / "config.json").write_text("{}")
    c = hash_contents(path)
    m = VersionManifest(JOB, 0, 0, c.digest, c.bytes, c.files, [], time.time(), "blake3", c.sizes)
    (path / MANIFEST).write_text(manifest_text(m))
    return c.bytes


async def loopback(work: Path, mb: int, fetchers: list[int], repeats: int) -> dict:
    """Seconds for k pods (processes) fetching one version at once from the real learner server."""
    from weight_path import start_learner

    nbytes = synthetic_version(work / "store", mb)
    token = secrets.token_hex(16)
    server, target = await start_learner(work / "store", token, job=JOB)
    ctx = multiprocessing.get_context("spawn")
    out: dict = {"version_bytes": nbytes, "fetchers": {}}
    try:
        for k in fetchers:
            walls = []
            for _ in range(repeats):
                walls.append(await asyncio.to_thread(_fetch_all, ctx, k, target, token, work / "pods"))
            wall = statistics.median(walls)
            out["fetchers"][str(k)] = {"seconds": walls, "aggregate_gb_per_s": k * nbytes / wall / 1e9,
                                       "per_fetcher_gb_per_s": nbytes / wall / 1e9}  # fmt: skip
            print(f"{k} fetchers: {k * nbytes / wall / 1e9:.2f} GB/s together", file=sys.stderr)
    finally:
        await server.stop(0)
    return out


def _fetch_all(ctx, k: int, target: str, token: str, pods: Path) -> float:
    barrier, results = ctx.Barrier(k + 1), ctx.Queue()
    procs = [ctx.Process(target=fetch_in_process, args=(target, token, str(pods / f"p{i}"), barrier, results))
             for i in range(k)]  # fmt: skip
    for p in procs:
        p.start()
    barrier.wait()  # every pod has started and imported what it needs
    t0 = time.perf_counter()
    got = [results.get(timeout=900) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    shutil.rmtree(pods)
    failed = [g for g in got if isinstance(g, str)]
    if failed:
        raise RuntimeError(f"a fetch failed: {failed[0]}")
    return wall


def rates_from(weight_path: dict, measured: dict | None, nic_gbit: float) -> Rates:
    """The model's inputs: this machine's measured rates and per-GB costs, and one NIC bandwidth."""
    per_gb = weight_path["seconds_per_gb"]
    if measured:
        fetchers = measured["fetchers"]
        stream = fetchers[min(fetchers, key=int)]["per_fetcher_gb_per_s"] * 1e9
        serve = max(f["aggregate_gb_per_s"] for f in fetchers.values()) * 1e9
    else:  # one fetch of the weight-path benchmark: one stream, and the learner's capacity is at least that
        stream = serve = 1e9 / per_gb["phases"]["fetch_phases"]["fetch"]
    return Rates(nic=nic_gbit * 1e9 / 8, stream=stream, learner_serve=serve,
                 publish_s_per_gb=per_gb["publish_given_probes"], load_s_per_gb=per_gb["phases"]["shared_phases"]["load"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Measure FetchWeights on loopback, run the model, write the JSON and the plot."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=16)
    p.add_argument("--gb", type=float, default=3.4, help="version size, GB")
    p.add_argument("--nics", type=float, nargs="+", default=[25, 100, 200], help="NIC bandwidths, Gb/s")
    p.add_argument("--chunk-mib", type=float, default=2, help="relay and broadcast chunk, MiB")
    p.add_argument("--fetchers", type=int, nargs="*", default=[1, 4, 16], help="loopback pods; none: skip")
    p.add_argument("--measure-mb", type=int, default=256, help="size of the loopback version, MiB")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--weight-path", type=Path, default=REPO / "benchmarks/results/weight_path.json")
    p.add_argument("--tmp", type=Path, default=None)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/weight_fanout.json")
    p.add_argument(
        "--loopback-from", type=Path, default=None,
        help="take the loopback measurements from this earlier result instead of measuring again",
    )  # fmt: skip
    args = p.parse_args(argv)
    weight_path = json.loads(args.weight_path.read_text())
    measured = None
    if args.loopback_from:
        measured = json.loads(args.loopback_from.read_text())["inputs"]["loopback"]
        measured = {**measured, "from": str(args.loopback_from)}
    elif args.fetchers:
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="weight-fanout-") as tmp:
            measured = asyncio.run(loopback(Path(tmp), args.measure_mb, args.fetchers, args.repeats))
    simulated, winners = {}, {}
    for nic in args.nics:
        r = rates_from(weight_path, measured, nic)
        methods = distribute(args.gb * 1e9, args.pods, args.chunk_mib * (1 << 20), r)
        # The same with streams as fast as the NIC: what each topology allows once CPU is not the limit.
        nic_bound = replace(r, stream=math.inf, learner_serve=math.inf)
        for name, ideal in distribute(
            args.gb * 1e9, args.pods, args.chunk_mib * (1 << 20), nic_bound
        ).items():
            methods[name]["seconds_if_streams_keep_up_with_the_nic"] = ideal["seconds"]
        key = f"{nic:g}"
        simulated[key] = {"nic_gbit_per_s": nic, "rates": vars(r), "methods": methods}
        winners[key] = {
            "overall": min(methods, key=lambda m: methods[m]["seconds"]),
            "runs_on_cpu": min((m for m in methods if "GPU" not in m), key=lambda m: methods[m]["seconds"]),
        }
    result = {
        "benchmark": "weight_fanout",
        "command": " ".join(
            ["python benchmarks/weight_fanout.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "version_gb": args.gb,
        "pods": args.pods,
        "chunk_mib": args.chunk_mib,
        "inputs": {
            "weight_path": str(args.weight_path),
            "weight_path_version_bytes": weight_path["version_bytes"],
            "seconds_per_gb": weight_path["seconds_per_gb"],
            "loopback": measured,
        },  # fmt: skip
        "assumptions": [
            "every NIC (learner and pods) has the given bandwidth in each direction; no switch contention",
            "one stream's rate and the learner's capacity are loopback measurements on this 2-core machine, "
            "both ends sharing its cores: lower bounds for separate machines",
            "a relaying pod receives and sends at once (separate cores), each at one stream's rate",
            "fan-out and relay serve the store's copy, so the version is published first (store path, "
            "probes given); NCCL sends from the learner's memory and the store write runs in the background",
            "NCCL: 85% of the NIC (assumed, not measured: GPU only); weights land in the engine's GPU "
            "buffers, so no disk and no separate load",
            "load: this machine's per-GB read of a version into preallocated tensors (page cache)",
        ],
        "simulated": simulated,
        "fastest": winners,
        "machine": machine(),
    }
    write_result(result, args.out)
    from weight_plot import plot_fanout

    plot_fanout(result, args.out.with_suffix(".png"))
    for key, sim in simulated.items():
        parts = ", ".join(f"{m} {v['seconds']:.1f} s" for m, v in sim["methods"].items())
        print(f"{key} Gb/s: {parts}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
