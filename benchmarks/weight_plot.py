"""The plots of the weight-path and weight-fanout benchmarks (PNG beside their JSON)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stack(ax, y: int, segments: list[tuple[str, float]], colors: dict) -> float:
    left = 0.0
    for name, seconds in segments:
        if name not in colors:
            colors[name] = f"C{len(colors) % 10}"
            label = name
        else:
            label = None
        ax.barh(y, seconds, left=left, color=colors[name], label=label, edgecolor="white", linewidth=0.5)
        left += seconds
    ax.text(left, y, f" {left:.2f} s", va="center", fontsize=8)
    return left


def plot_weight_path(result: dict, path: Path) -> None:
    """Median seconds per path as stacked phases: the plain copy, publish + reload both ways, the old path."""
    plt = _pyplot()
    med, old = result["median_seconds"], result["old_path_seconds"]
    publish = [(f"publish: {k}", v) for k, v in med["publish_phases"].items()]
    old_publish = [(f"publish: {k}", v) for k, v in med["old_publish_phases"].items()]
    bars = [
        ("plain copy + fsync", [("copy + fsync", med["copy"])]),
        ("publish + reload\nshared store", publish + [(f"reload: {k}", v) for k, v in med["shared_phases"].items()]),
        ("publish + reload\nFetchWeights", publish + [(f"reload: {k}", v) for k, v in med["fetch_phases"].items()]),
        ("old (sha256 ×2)\nshared store", old_publish + [("reload: verify", med["sha256_pass"]),
                                                         ("reload: load", med["shared_phases"]["load"])]),
        ("old (sha256 ×2)\nFetchWeights", old_publish + [("reload: fetch", old["reload_fetch"] - med["fetch_phases"]["load"]),
                                                         ("reload: load", med["fetch_phases"]["load"])]),
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 4.2))
    colors: dict = {}
    longest = max(_stack(ax, y, segments, colors) for y, (_, segments) in enumerate(bars))
    ax.set_xlim(0, longest * 1.12)
    ax.axvline(1.5 * med["copy"], color="grey", linestyle="--", linewidth=1, label="1.5 × plain copy")
    ax.set_yticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median)")
    ax.set_title(f"one {result['version_bytes'] / 1e9:.2f} GB version: publish and reload vs copying its bytes",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fanout(result: dict, path: Path) -> None:
    """Seconds to bring one version to every pod, per method (bars) and NIC bandwidth (groups)."""
    plt = _pyplot()
    sims = result["simulated"]
    methods = list(next(iter(sims.values()))["methods"])
    bandwidths = list(sims)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [b + (i - (len(methods) - 1) / 2) * width for b in range(len(bandwidths))]
        ys = [sims[bw]["methods"][m]["seconds"] for bw in bandwidths]
        ax.bar(xs, ys, width, label=m)
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(bandwidths)), [f"{bw} Gb/s NIC" for bw in bandwidths])
    ax.set_yscale("log")
    ax.set_ylabel("seconds until every pod serves it (log)")
    ax.set_title(f"{result['version_gb']} GB version to {result['pods']} pods (model; CPU costs measured here)",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
