"""Latency percentiles per chain from bench/results.json (written by the e2e `bench` binary).

Usage: python chart.py results.json latency.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PCTS = [("p50", "p50_us"), ("p90", "p90_us"), ("p99", "p99_us"), ("p99.9", "p999_us")]
COLORS = {"direct": "#888888", "nginx": "#2a9d8f", "daprd": "#e76f51", "upstream": "#6d597a"}


def main(src: str, dst: str) -> None:
    with open(src) as f:
        results = json.load(f)
    settings = results["settings"]
    protocols = ["http", "grpc"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(11, 4.2), sharey=True)
    for ax, proto in zip(axes, protocols):
        rows = [e for e in results["latency"] if e["protocol"] == proto]
        width = 0.8 / max(len(rows), 1)
        for i, row in enumerate(rows):
            values = [row["summary"][key] / 1000.0 for _, key in PCTS]
            xs = [x + (i - (len(rows) - 1) / 2) * width for x in range(len(PCTS))]
            bars = ax.bar(xs, values, width, label=row["chain"], color=COLORS.get(row["chain"]))
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(range(len(PCTS)), [label for label, _ in PCTS])
        ax.set_title(f"{proto.upper()} API")
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("latency (ms, log scale)")
    mode = " (--quick)" if settings["mode"] == "quick" else ""
    fig.suptitle(
        f"Service invocation latency at {settings['rate']:.0f} req/s, "
        f"{settings['connections']} connections, {settings['body_bytes']} B body, mTLS{mode}"
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
