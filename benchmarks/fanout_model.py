"""A chunk-level model of bringing one version to N pods: who sends which chunk to whom, and when.

Every sender has one egress link (its NIC, `nic` bytes/s) that sends one chunk at a time; a chunk
transfer takes chunk / min(link share, stream rate) seconds, where the stream rate is what one FetchWeights
stream sustains through gRPC, hashing and writing (measured). A pod forwards a chunk only once it has
received it whole (store and forward per chunk, so relays pipeline). Topologies:

- fan-out: the learner sends every chunk to each of the N pods in turn (its NIC carries N copies, and
  its gRPC server's capacity is shared by N streams);
- chain: learner -> pod 1 -> pod 2 -> ... (each NIC carries one copy out);
- tree: a binary tree rooted at the learner (each interior NIC carries two copies out);
- doubling: whole-version store and forward, what services/rollout implements: a pod passes on only a
  copy it holds complete, so in each round every holder (the learner included) sends the whole version
  to one pod that lacks it, and the holders double: 1 -> 2 -> 4 -> ... (ceil(log2(N + 1)) rounds);
- NCCL broadcast: the analytic time of a pipelined ring broadcast, S / (efficiency * nic) plus the fill
  of N hops of one chunk, straight into GPU memory (no gRPC, no disk, no hashing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Rates:
    """What the model is fed: bytes/s of links and streams, seconds per GB of the pods' own work."""

    nic: float  # bytes/s of every NIC (learner and pods), each direction
    stream: float  # bytes/s one FetchWeights stream sustains (send + receive, hash, write)
    learner_serve: float  # bytes/s all of the learner's FetchWeights streams sustain together
    publish_s_per_gb: float  # writing the version to the store before it can be served
    load_s_per_gb: float  # a pod reading a received version into its engine
    nccl_efficiency: float = 0.85  # share of the NIC's bandwidth an NCCL broadcast achieves (assumed)


def pipelined(
    children: dict[int, list[int]], nodes: int, chunks: int, chunk_s: dict[int, float]
) -> list[float]:
    """Time each node (0 = learner, has everything at t=0) holds every chunk, sending chunk by chunk.

    `children[n]`: whom node n sends to, in order; `chunk_s[n]`: seconds node n takes to send one chunk
    to one child. Parents must be numbered before their children.
    """
    have = [[0.0] * chunks] + [[float("inf")] * chunks for _ in range(nodes - 1)]
    for node in range(nodes):
        kids = children.get(node, [])
        free = 0.0
        for i in range(chunks):
            for kid in kids:
                free = max(free, have[node][i]) + chunk_s[node]
                have[kid][i] = free
    return [max(h) for h in have]


def chain(n: int) -> dict[int, list[int]]:
    """Learner -> 1 -> 2 -> ... -> n."""
    return {i: [i + 1] for i in range(n)}


def binary_tree(n: int) -> dict[int, list[int]]:
    """Node i sends to 2i+1 and 2i+2 (heap order: parents come first)."""
    return {i: [k for k in (2 * i + 1, 2 * i + 2) if k <= n] for i in range(n + 1)}


def doubling(n: int) -> dict[int, list[int]]:
    """Round k (from 0): every holder i < 2**k sends to i + 2**k, so node i's children come in round order."""
    rounds = max(1, math.ceil(math.log2(n + 1)))
    return {i: [i + 2**k for k in range(rounds) if 2**k > i and i + 2**k <= n] for i in range(n + 1)}


def fan_out(n: int) -> dict[int, list[int]]:
    """The learner sends to every pod."""
    return {0: list(range(1, n + 1))}


def distribute(size: float, pods: int, chunk: float, r: Rates) -> dict[str, dict]:
    """Seconds until every pod has the version loaded, per method, with its parts."""
    chunks = max(1, round(size / chunk))
    chunk = size / chunks
    gb = size / 1e9
    publish, load = r.publish_s_per_gb * gb, r.load_s_per_gb * gb
    # The learner's streams share its NIC and its gRPC server; sending each chunk to one pod after the
    # other at their combined rate is the same fair share.
    learner_rate = min(r.nic, r.learner_serve, r.stream * pods)
    star = pipelined(fan_out(pods), pods + 1, chunks, {0: chunk / learner_rate})
    relay_rate = min(r.nic, r.stream)
    line = pipelined(chain(pods), pods + 1, chunks, dict.fromkeys(range(pods + 1), chunk / relay_rate))
    # An interior tree node sends each chunk twice over one NIC: one child at a time, at the full rate.
    tree = pipelined(binary_tree(pods), pods + 1, chunks, dict.fromkeys(range(pods + 1), chunk / relay_rate))
    # Whole copies: one "chunk" the size of the version, sent by each holder to one pod at a time.
    rounds = doubling(pods)
    whole = pipelined(rounds, pods + 1, 1, dict.fromkeys(range(pods + 1), size / relay_rate))
    nccl_rate = r.nccl_efficiency * r.nic
    nccl = size / nccl_rate + pods * chunk / nccl_rate
    return {
        "learner fan-out (FetchWeights)": _parts(publish, max(star[1:]), load, pods * gb),
        "peer relay, chain": _parts(publish, max(line[1:]), load, gb),
        "peer relay, binary tree": _parts(publish, max(tree[1:]), load, gb),
        "peer relay, doubling (whole copies; implemented)": _parts(
            publish, max(whole[1:]), load, len(rounds[0]) * gb
        ),
        "NCCL broadcast (GPU only)": _parts(0.0, nccl, 0.0, gb),
    }


def _parts(publish: float, transfer: float, load: float, learner_egress_gb: float) -> dict:
    return {"seconds": publish + transfer + load, "publish": publish, "transfer": transfer, "load": load,
            "learner_egress_gb": learner_egress_gb}  # fmt: skip
