"""The weight path at scale: publishing a version and reloading it on a pod, against copying its bytes.

A synthetic model (random bf16 weights in Qwen3-1.7B's shapes, fewer layers to reach `--gb`; narrower
below 0.75 GB; nothing downloaded; the tiny factory's tokenizer) is measured, each over `--repeats`
after one warm-up, side by side:

- plain copy: the version's files copied to another directory of the same filesystem, then fsynced;
- publish: `asympo.weights.store.write_version` (save, probes, blake3, fsync, rename, gc; per phase);
- reload through the shared store: the pod's `materialize` in place (trusted: manifest and sizes), then
  the safetensors read into preallocated tensors as vLLM's default loader does (safe_open, then
  `param.copy_` per tensor). The real vLLM reload is not run at this size on CPU. The files are in page
  cache (written moments before, as on the learner's own machine); `load_cold` evicts them first;
- reload through FetchWeights: a real learner gRPC server (token-authenticated, loopback) and the pod's
  `materialize` fetching into its weights dir (hashed as it streams), then the same tensor load;
- the old path (sha256 twice): its write run as it was (save, probes, sha256, fsync, one after the
  other); its reloads emulated by adding a measured sha256 pass over the version to the new ones (twice
  for FetchWeights: the learner verified the version before streaming it, the pod after receiving it).

    python benchmarks/weight_path.py [--gb 1.5] [--repeats 3] [--tmp DIR] [--out benchmarks/results/weight_path.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version as package_version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `services` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from results_io import machine, write_result  # noqa: E402
from safetensors import safe_open  # noqa: E402
from synthetic_qwen3 import QWEN3_1_7B, synthetic_model  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402
from weight_plot import plot_weight_path  # noqa: E402

from asympo.models.tiny import build_tokenizer  # noqa: E402
from asympo.proto.v1 import bus_pb2  # noqa: E402
from asympo.runtime.durable import fsync_dir, fsync_tree  # noqa: E402
from asympo.runtime.grpc_auth import ClientAuth  # noqa: E402
from asympo.weights.digests import SHA256  # noqa: E402
from asympo.weights.integrity import content_files, hash_contents  # noqa: E402
from asympo.weights.store import verify_version, write_version  # noqa: E402
from asympo.weights.timings import timed  # noqa: E402
from services.rollout.policy import materialize  # noqa: E402

JOB = "bench"


def plain_copy(src: Path, dest: Path) -> float:
    """Seconds to copy every file of `src` into `dest` and fsync them."""
    t0 = time.perf_counter()
    dest.mkdir()
    for f in src.iterdir():
        shutil.copyfile(f, dest / f.name)
    fsync_tree(dest)
    return time.perf_counter() - t0


class EngineWeights:
    """Preallocated tensors filled from a version's safetensors, as vLLM's default weight loader fills its own."""

    def __init__(self, path: Path):
        self.params = {}
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    t = st.get_slice(k)
                    self.params[k] = torch.empty(t.get_shape(), dtype=getattr(torch, _DTYPES[t.get_dtype()]))

    def load(self, path: Path) -> float:
        """Seconds to read every tensor of the version into the preallocated ones."""
        t0 = time.perf_counter()
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    self.params[k].copy_(st.get_tensor(k))
        return time.perf_counter() - t0


_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def evict(path: Path) -> None:
    """Drop a version's (clean, fsynced) pages from page cache, so the next read comes from disk."""
    for f in content_files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


async def start_learner(store: Path, token: str, job: str = JOB):
    """The learner's real gRPC server (LearnerService behind the token) serving `job` from `store`."""
    from services.learner.server import grpc_server
    from services.learner.settings import LearnerSettings

    settings = LearnerSettings(grpc_token=token, host="127.0.0.1", port=0, metrics_port=-1, weight_store=store,
                               job_id=job)  # fmt: skip
    server = grpc_server(settings, lambda: None)
    await server.start()
    return server, f"127.0.0.1:{server.port}"


def old_publish(store: Path, model, tok, timings: dict) -> float:
    """Seconds of the write as it was before blake3, one step after the other: save, probes, sha256, fsync."""
    from asympo.weights.probes import compute_probes

    t0 = time.perf_counter()
    tmp = store / JOB / ".v0.tmp"
    with timed(timings, "save"):
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    with timed(timings, "probes"):
        compute_probes(model, tok)
    with timed(timings, "hash"):
        hash_contents(tmp, SHA256)
    with timed(timings, "fsync"):
        fsync_tree(tmp)
        os.rename(tmp, store / JOB / "v0")
        fsync_dir(store / JOB)
    return time.perf_counter() - t0


class Rig:
    """The model, the learner's server and the pod's engine tensors, kept across rounds."""

    def __init__(self, model, tok, work: Path, target: str, auth: ClientAuth):
        self.model, self.tok, self.work, self.target, self.auth = model, tok, work, target, auth
        self.engine: EngineWeights | None = None

    def round(self, v: int) -> dict:
        """Every measurement once, on version `v`; on a worker thread, as the learner and the pods call them."""
        work = self.work
        r: dict = {"publish_phases": {}, "shared_phases": {}, "fetch_phases": {}}
        t0 = time.perf_counter()
        pv, path = write_version(work / "store", JOB, v, v, self.model, self.tok, keep=2,
                                 timings=r["publish_phases"])  # fmt: skip
        r["publish"] = time.perf_counter() - t0
        r["bytes"] = pv.bytes
        engine = self.engine = self.engine or EngineWeights(path)
        r["copy"] = plain_copy(path, work / "copy")
        shutil.rmtree(work / "copy")

        t0 = time.perf_counter()
        local = materialize(pv, work / "pod", None, timings=r["shared_phases"])
        r["shared_phases"]["load"] = engine.load(local.path)
        r["reload_shared"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify_version(path, pv.sha256)
        r["full_verify"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        hash_contents(path, SHA256)
        r["sha256_pass"] = time.perf_counter() - t0
        evict(path)
        r["load_cold"] = engine.load(path)

        remote = bus_pb2.PolicyVersion()
        remote.CopyFrom(pv)
        remote.uri = f"grpc://learner/{JOB}/v{v}"  # not mounted on the pod: fetched
        t0 = time.perf_counter()
        local = materialize(remote, work / "pod", self.target, self.auth, timings=r["fetch_phases"])
        r["fetch_phases"]["load"] = engine.load(local.path)
        r["reload_fetch"] = time.perf_counter() - t0
        shutil.rmtree(work / "pod" / JOB)

        # The store path alone: the same write with the probes already computed (e.g. on the learner's GPU).
        r["publish_given_probes_phases"] = {}
        t0 = time.perf_counter()
        write_version(work / "store-given-probes", JOB, v, v, self.model, self.tok, keep=1,
                      probes=local.manifest.probes, timings=r["publish_given_probes_phases"])  # fmt: skip
        r["publish_given_probes"] = time.perf_counter() - t0
        shutil.rmtree(work / "store-given-probes")
        r["old_publish_phases"] = {}
        r["old_publish"] = old_publish(work / "store-old", self.model, self.tok, r["old_publish_phases"])
        shutil.rmtree(work / "store-old")
        return r


def summarize(rounds: list[dict]) -> dict:
    """Medians, per-GB figures, the emulated old path and the ratios to the plain copy."""
    med = {k: statistics.median(r[k] for r in rounds) for k in
           ("publish", "copy", "reload_shared", "reload_fetch", "full_verify", "sha256_pass", "load_cold",
            "publish_given_probes", "old_publish")}  # fmt: skip
    groups = (
        "publish_phases",
        "shared_phases",
        "fetch_phases",
        "publish_given_probes_phases",
        "old_publish_phases",
    )
    for group in groups:
        med[group] = {k: statistics.median(r[group][k] for r in rounds) for k in rounds[0][group]}
    sha = med["sha256_pass"]
    old = {
        "publish": med["old_publish"],
        "reload_shared": med["shared_phases"]["load"] + sha,
        "reload_fetch": med["reload_fetch"] + 2 * sha,
    }
    gb = rounds[0]["bytes"] / 1e9
    per_gb = {k: v / gb for k, v in med.items() if isinstance(v, float)}
    per_gb.update({f"old_{k}": v / gb for k, v in old.items()})
    per_gb["phases"] = {g: {k: v / gb for k, v in med[g].items()} for g in groups}
    ratios = {
        "shared_store": (med["publish"] + med["reload_shared"]) / med["copy"],
        "fetch_weights": (med["publish"] + med["reload_fetch"]) / med["copy"],
        "shared_store_probes_given": (med["publish_given_probes"] + med["reload_shared"]) / med["copy"],
        "old_shared_store": (old["publish"] + old["reload_shared"]) / med["copy"],
        "old_fetch_weights": (old["publish"] + old["reload_fetch"]) / med["copy"],
    }
    goal = {"shared_store_max_ratio": 1.5, "met": ratios["shared_store"] <= 1.5,
            "met_with_probes_given": ratios["shared_store_probes_given"] <= 1.5}  # fmt: skip
    return {"median_seconds": med, "old_path_seconds": old, "seconds_per_gb": per_gb,
            "ratios_to_plain_copy": ratios, "goal": goal}  # fmt: skip


async def run(args, work: Path) -> dict:
    """Build the model, start the learner's server, and measure."""
    model, config = synthetic_model(args.gb)
    tok = build_tokenizer()
    token = secrets.token_hex(16)
    server, target = await start_learner(work / "store", token)
    rig = Rig(model, tok, work, target, ClientAuth(token))
    rounds = []
    try:
        for v in range(args.repeats + 1):  # v0 warms up (first allocations, imports, connections)
            r = await asyncio.to_thread(rig.round, v)  # the event loop serves FetchWeights meanwhile
            print(f"round {v}: publish {r['publish']:.2f}s copy {r['copy']:.2f}s shared {r['reload_shared']:.2f}s "
                  f"fetch {r['reload_fetch']:.2f}s", file=sys.stderr)  # fmt: skip
            if v:
                rounds.append(r)
    finally:
        await server.stop(0)
    shape = {k: getattr(config, k) for k in (*QWEN3_1_7B, "num_hidden_layers")}
    params = sum(p.numel() for p in model.parameters())
    return {"model": {"architecture": "Qwen3ForCausalLM (random, tied, bf16)", **shape, "parameters": params},
            "version_bytes": rounds[0]["bytes"], "rounds": rounds, **summarize(rounds)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON and the plot."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.5, help="size of the synthetic version, GB")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tmp", type=Path, default=None, help="work directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/weight_path.json")
    args = p.parse_args(argv)
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="weight-path-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    result = {
        "benchmark": "weight_path",
        "command": " ".join(
            ["python benchmarks/weight_path.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "repeats": args.repeats,
        **result,
        "machine": machine(
            torch_threads=torch.get_num_threads(),
            torch=package_version("torch"),
            safetensors=package_version("safetensors"),
            blake3=package_version("blake3"),
        ),  # fmt: skip
    }
    write_result(result, args.out)
    plot_weight_path(result, args.out.with_suffix(".png"))
    per_gb, ratios = result["seconds_per_gb"], result["ratios_to_plain_copy"]
    print(
        f"{result['version_bytes'] / 1e9:.2f} GB, s/GB: copy {per_gb['copy']:.2f}, publish {per_gb['publish']:.2f}, "
        f"reload shared {per_gb['reload_shared']:.2f}, reload fetch {per_gb['reload_fetch']:.2f}; "
        f"(publish+reload)/copy: shared {ratios['shared_store']:.2f}, fetch {ratios['fetch_weights']:.2f} "
        f"(old sha256 path {ratios['old_shared_store']:.2f}, {ratios['old_fetch_weights']:.2f}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
