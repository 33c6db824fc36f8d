"""bench/scale.py's section of bench/RESULTS.md and its plot bench/scale.svg, from run records.

Each N's record (one JSON object) is kept in the section as an HTML comment, so a run at one N
rewrites its own table and line and keeps the others.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.report import BENCH_DIR, replace_section, svg_frame

RUN_RECORD = "<!-- scale-run "
TICKS = 5
COLORS = ("#4a7ab7", "#c0392b", "#27ae60", "#8e44ad", "#d68910")


def tick_step(largest: float) -> float:
    """A round step (1, 2 or 5 x 10^k) so that TICKS steps reach past `largest`."""
    raw = max(largest, 1e-9) / TICKS
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def line_chart_svg(title: str, series: dict[str, list[list[float]]], *, x_unit: str, y_unit: str) -> str:
    """One polyline per series of (x, y) points, with axes, ticks and a legend."""
    width, height, left, bottom, top, right = 640, 340, 64, 44, 40, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    x_step = tick_step(max((p[0] for points in series.values() for p in points), default=1.0))
    y_step = tick_step(max((p[1] for points in series.values() for p in points), default=1.0))
    x_top, y_top = x_step * TICKS, y_step * TICKS

    def x(value: float) -> float:
        return left + plot_w * value / x_top

    def y(value: float) -> float:
        return top + plot_h * (1 - value / y_top)

    parts = [
        *svg_frame(width, height, title, left=left, top=top, plot_w=plot_w, plot_h=plot_h),
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{x_unit}</text>',
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" text-anchor="middle">{y_unit}</text>',
    ]
    for tick in range(TICKS + 1):
        xv, yv = x_step * tick, y_step * tick
        parts.append(f'<text x="{x(xv):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{xv:g}</text>')
        parts.append(f'<text x="{left - 6}" y="{y(yv) + 4:.1f}" text-anchor="end">{yv:g}</text>')
    for index, (label, points) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        coordinates = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in points)
        parts.append(f'<polyline points="{coordinates}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{left + 12}" y="{top + 16 + 16 * index}" fill="{color}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def stored_runs(results: Path) -> dict[int, dict[str, Any]]:
    """The run records kept in the scale section of RESULTS.md (one HTML comment per N)."""
    text = results.read_text() if results.exists() else ""
    runs: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith(RUN_RECORD) and line.endswith(" -->"):
            record = json.loads(line[len(RUN_RECORD) : -len(" -->")])
            runs[int(record["n"])] = record
    return runs


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def run_table(record: dict[str, Any]) -> str:
    operator = record["operator"]
    latency = record["latency"]

    def spread(values: list[float]) -> str:
        return " / ".join(f"{v:.1f}" for v in values) if values else "—"

    def phase(name: str) -> str:
        counts = operator[name]
        top = ", ".join(f"{kind} {count}" for kind, count in counts["top"][:3])
        return f"{counts['reads']} / {counts['writes']}" + (f" ({top})" if top else "")

    ready = (
        f"**{seconds(record['ready_after_last_apply'])}**"
        if record["converged"]
        else f"NOT converged ({record['ready']}/{record['n']} Ready)"
    )
    busiest = ", ".join(f"{client} {count}" for client, count in record["busiest_during_converge"][:4])
    rows = [
        ("last apply, seconds after the first", seconds(record["apply_seconds"]), ""),
        ("every object Ready=True, seconds after the last apply", ready, "30 (N = 1000)"),
        ("apply → children exist, p50 / p90 / p99 / max s", spread(latency["children_at"]), ""),
        ("apply → pods Ready, p50 / p90 / p99 / max s", spread(latency["pods_ready_at"]), ""),
        ("apply → Ready=True, p50 / p90 / p99 / max s", spread(latency["ready_at"]), ""),
        ("operator reads / writes while converging", phase("converge"), ""),
        (f"operator reads / writes in {record['idle_seconds']:.0f} s idle", phase("idle"), "writes 0"),
        ("requests per idle object per hour", f"{record['idle_per_object_hour']['requests']:.1f}", ""),
        ("writes per idle object per hour", f"**{record['idle_per_object_hour']['writes']:.1f}**", "0"),
        (
            f"writes of the restarted operator in {record['restart_seconds']:.0f} s",
            f"**{record['restart_writes']}** (reads {operator['restart']['reads']})",
            "0",
        ),
        ("objects that left Ready=True after reaching it", str(record["ready_lost"]), "0"),
        ("operator RSS max / median, MiB", f"{record['rss_mib']['max']:.0f} / {record['rss_mib']['median']:.0f}", ""),
        (
            "operator CPU seconds: converge / idle / restart",
            " / ".join(f"{record['cpu_seconds'][p]:.1f}" for p in ("converge", "idle", "restart")),
            "",
        ),
        ("busiest clients while converging (requests)", busiest, ""),
    ]
    table = "\n".join(f"| {name} | {value} | {target} |" for name, value, target in rows)
    return (
        f"### N = {record['n']}\n\n"
        f"`{record['command']}` — {record['date']}, operator at {record['commit']}, {record['nodes']} KWOK nodes.\n\n"
        f"| measure | value | target |\n|---|---|---|\n{table}\n"
    )


def section(runs: dict[int, dict[str, Any]]) -> str:
    largest = runs[max(runs)]
    flags = "\n".join(
        f"- {component}: `{' '.join(values)}`" for component, values in sorted(largest["opt_in_flags"].items())
    )
    tables = "\n".join(run_table(runs[n]) for n in sorted(runs))
    records = "\n".join(f"{RUN_RECORD}{json.dumps(runs[n], separators=(',', ':'))} -->" for n in sorted(runs))
    return f"""## bench/scale.py — API traffic and convergence with N LlamaDeployments

N copies of the 8B-on-vLLM example (one 24 GB GPU each) applied {largest["concurrency"]} at a time to a real control plane
with KWOK GPU nodes (8 x L4 per node, {largest["gpu_headroom"]:g} x N GPUs), the operator unmodified as a child
process with its own client certificate. Requests are counted server-side from the apiserver's audit
log (`ResponseComplete` only, watches excluded); reads are get/list, writes create/update/patch/delete.
Idle counts are scaled to an hour per object; the settle phase ({largest["settle_seconds"]:g} s after the last object
turned Ready) is in neither converge nor idle. Binaries: `{largest["binaries"]}`; etcd on tmpfs with
`--unsafe-no-fsync` (the control plane's default). Opt-in flags (`ControlPlane(scale=ScaleSettings(), audit_log=True)`):

{flags}

{tables}
Plot: [scale.svg](scale.svg) (objects Ready over seconds since the first apply).

{records}
"""


def write_results(
    record: dict[str, Any], results: Path = BENCH_DIR / "RESULTS.md", plot: Path = BENCH_DIR / "scale.svg"
) -> None:
    """Add (or replace) this N's run in the section and redraw the plot with every N kept there."""
    runs = stored_runs(results)
    runs[int(record["n"])] = record
    replace_section("scale", section(runs), results)
    series = {f"N = {n}": runs[n]["curve"] for n in sorted(runs)}
    plot.write_text(
        line_chart_svg(
            "LlamaDeployments Ready=True after the first apply",
            series,
            x_unit="seconds since the first apply",
            y_unit="objects Ready",
        )
    )
