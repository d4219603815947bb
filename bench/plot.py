#!/usr/bin/python3
"""Draws a `kvstrata bench` plot as SVG with matplotlib (Debian's python3-matplotlib).

Usage: plot.py SPEC.json OUT.svg

SPEC is what bench_util's WritePlotSvg writes:
  {"title": str, "x_label": str, "y_label": str, "log_x": bool, "log_y": bool,
   "kind": "line" | "bars",
   "series": [{"label": str, "points": [[x, y], ...]}, ...],
   "categories": [str, ...]}          # kind "bars": x of each point indexes this list
Axis labels carry their units, e.g. "prompt tokens" or "TTFT (ms)".
Exit status 0 on success; 2 with a message on stderr for a bad spec or a missing library.
"""
import json
import sys


def main(argv):
    if len(argv) != 3:
        print("usage: plot.py SPEC.json OUT.svg", file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plot.py: matplotlib is missing ({e}); run scripts/setup", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    series = spec.get("series") or []
    if not any(s.get("points") for s in series):
        print("plot.py: no points to plot", file=sys.stderr)
        return 2
    matplotlib.rcParams["svg.hashsalt"] = "kvstrata"  # stable ids: diffs show data changes only
    fig, ax = plt.subplots(figsize=(8, 4.6))
    if spec.get("kind") == "bars":
        cats = spec.get("categories") or []
        width = 0.8 / len(series)
        for i, s in enumerate(series):
            xs = [p[0] + (i - (len(series) - 1) / 2) * width for p in s["points"]]
            ax.bar(xs, [p[1] for p in s["points"]], width=width, label=s["label"])
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
    else:
        for s in series:
            pts = sorted(s["points"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s["label"])
        if spec.get("log_x"):
            ax.set_xscale("log")
    if spec.get("log_y"):
        ax.set_yscale("log")
    ax.set_title(spec.get("title", ""))
    ax.set_xlabel(spec.get("x_label", ""))
    ax.set_ylabel(spec.get("y_label", ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(argv[2], format="svg", metadata={"Date": None})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
