#!/usr/bin/env python3
"""The benchmark chart, drawn from the figures bench/run.py writes.

    python bench/chart.py [bench/results/latest.json] [-o bench/results/latest.png]

Strategy: one PNG with up to three panels sharing one colour per target.  The first
two are grouped bars, one group per scenario and one bar per target: median tps, and
median p99 latency on a log scale (the 2,500-client scenario waits far longer than
the others).  The third, when idle memory was measured, has one bar per pooler: bytes
of RSS per idle client.  Bars of a target whose runs had failed transactions or aborted
clients are hatched; a target a scenario does not apply to is marked n/a.  The title
states the date, the machine and the length of the runs, so a quick run cannot be
taken for a full one.

matplotlib is imported only inside ``draw``, with the Agg backend (no display), so the
benchmark and the tests run without it; it is the ``bench`` extra of pyproject.toml.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MISSING = (
    "matplotlib is not installed, so no chart can be drawn: "
    "pip install -e '.[bench]' (or run the benchmark with --no-chart)"
)

COLOURS = {
    "direct": "#8c8c8c",
    "pgusher": "#1f77b4",
    "pgusher-auto": "#17becf",
    "pgbouncer": "#ff7f0e",
}
HATCH = "///"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def colour(target: str) -> str:
    return COLOURS.get(target, "#9467bd")


def had_failures(cell: dict[str, Any]) -> bool:
    return bool(cell.get("failed_transactions") or cell.get("aborted_clients"))


def short_version(text: str | None) -> str:
    """"postgres (PostgreSQL) 15.20 (Debian ...)" -> "PostgreSQL 15.20"."""
    if not text:
        return ""
    words = text.replace("(", " ").replace(")", " ").split()
    return " ".join(words[1:3]) if words[0] == "postgres" else " ".join(words[:2])


def tick_label(sc: dict[str, Any]) -> str:
    """The scenario's name over the pgbench options that set it apart."""
    args = list(sc["pgbench_args"])
    for pair in (["-n"], ["-j", "2"], ["-M", "simple"]):
        for n in range(len(args) - len(pair) + 1):
            if args[n : n + len(pair)] == pair:
                del args[n : n + len(pair)]
                break
    options = " ".join(args)
    if sc.get("pool_size") not in (None, 20):
        options += f", pool {sc['pool_size']}"
    return f"{sc['name']}\n{options}"


def title(meta: dict[str, Any]) -> str:
    rounds = meta.get("rounds")
    length = f"{rounds} round{'s' if rounds != 1 else ''} of {meta.get('duration_s')} s per run"
    kind = "quick run, " if meta.get("quick") else ""
    machine = f"{meta.get('cpu_model') or meta.get('host')}, {meta.get('cpus')} CPUs"
    return (
        f"pgusher benchmark, {meta.get('date', '')[:10]} ({kind}{length}, medians)\n"
        f"{machine}; {short_version(meta.get('postgres'))}; "
        f"{short_version(meta.get('pgbouncer'))}"
    )


def bar_panel(
    ax: Axes,
    scenarios: Sequence[dict[str, Any]],
    targets: Sequence[str],
    key: str,
    ylabel: str,
    digits: int,
    log_scale: bool = False,
) -> None:
    """Grouped bars of ``key`` (a median in each scenario's target entry)."""
    width = 0.8 / max(len(targets), 1)
    values: list[float] = []
    for i, target in enumerate(targets):
        offset = (i - (len(targets) - 1) / 2) * width
        for j, sc in enumerate(scenarios):
            x = j + offset
            cell = sc["targets"].get(target, {})
            value = cell.get(key)
            if cell.get("status") != "ok" or value is None:
                label = "n/a" if cell.get("status") == "n/a" else "-"
                ax.text(x, 0.02, label, transform=ax.get_xaxis_transform(), rotation=90,
                        ha="center", va="bottom", fontsize=7, color="#555555")  # fmt: skip
                continue
            values.append(value)
            bars = ax.bar(x, value, width, color=colour(target),
                          hatch=HATCH if had_failures(cell) else None,
                          edgecolor="white" if had_failures(cell) else None)  # fmt: skip
            ax.bar_label(bars, labels=[f"{value:,.{digits}f}"], rotation=90, fontsize=7,
                         padding=2)  # fmt: skip
    ax.set_xticks(range(len(scenarios)), [tick_label(sc) for sc in scenarios], fontsize=8)
    ax.set_ylabel(ylabel)
    positive = [v for v in values if v > 0]
    if log_scale and positive:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 3, max(positive) * 8)
    elif positive:
        ax.set_ylim(0, max(positive) * 1.35)  # room for the labels and the legend
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def idle_panel(ax: Axes, idle: dict[str, Any]) -> None:
    """One horizontal bar per pooler: RSS bytes per idle client."""
    names = list(idle["targets"])
    for n, name in enumerate(names):
        result = idle["targets"][name]
        per = result.get("bytes_per_client")
        if per is None:
            ax.text(0, n, f"  {result.get('error', 'not measured')[:80]}", va="center", fontsize=8)
            continue
        ax.barh(n, per, color=colour(name))
        note = (f"  {per:,} B/client ({result['clients_open']:,} idle clients, "
                f"{result['processes']} process{'es' if result['processes'] != 1 else ''})")
        ax.text(per, n, note, va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"RSS bytes per idle client ({idle['clients']:,} idle clients)")
    values = [r.get("bytes_per_client") or 0 for r in idle["targets"].values()]
    ax.set_xlim(0, max([*values, 1]) * 1.8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def legend(ax: Axes, targets: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour(t), label=t) for t in targets]
    handles.append(Patch(facecolor="#cccccc", hatch=HATCH, edgecolor="white",
                         label="failed transactions or aborted clients"))  # fmt: skip
    ax.legend(handles=handles, fontsize=8, ncols=len(handles), loc="upper right")


def draw(result: dict[str, Any], path: Path) -> None:
    """Write the chart of ``result`` (the JSON bench/run.py writes) to ``path`` as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = result["scenarios"]
    targets = result["meta"]["targets"]
    idle = result.get("idle_memory")
    heights = [3.0, 3.0] + ([1.4] if idle else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, sum(heights) + 1.6),
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    bar_panel(axes[0], scenarios, targets, "median_tps", "transactions per second", 0)
    bar_panel(axes[1], scenarios, targets, "median_p99_ms", "p99 latency, ms (log)", 1,
              log_scale=True)  # fmt: skip
    legend(axes[0], targets)
    if idle:
        idle_panel(axes[2], idle)
    fig.suptitle(title(result["meta"]), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    default = Path(__file__).resolve().parent / "results" / "latest.json"
    p = argparse.ArgumentParser(description="Draw the benchmark chart from its JSON figures.")
    p.add_argument("json", type=Path, nargs="?", default=default)
    p.add_argument("-o", "--output", type=Path, help="PNG path (default: the JSON's, .png)")
    args = p.parse_args(argv)
    if not available():
        print(MISSING, file=sys.stderr)
        return 2
    out = args.output or args.json.with_suffix(".png")
    draw(json.loads(args.json.read_text()), out)
    print(f"chart written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
