"""Write one benchmark's section of bench/RESULTS.md and a small SVG bar chart beside it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is rewritten by the benchmark named in its heading.\n"


def replace_section(name: str, body: str, results: Path = RESULTS) -> None:
    """Replace (or append) the section between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = results.read_text() if results.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = f"{before}{block}{after}"
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    results.write_text(text)


def bar_chart_svg(
    title: str, labels: Sequence[str], values: Sequence[float], *, unit: str, limit: float | None = None
) -> str:
    """Bars per run, a dashed median line, and an optional red limit line."""
    width, height, left, bottom, top = 640, 320, 60, 40, 40
    top_value = max([*values, limit or 0.0]) * 1.15 or 1.0
    plot_w, plot_h = width - left - 20, height - top - bottom
    step = plot_w / max(len(values), 1)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    parts = svg_frame(width, height, title, left=left, top=top, plot_w=plot_w, plot_h=plot_h)
    for tick in range(5):
        value = top_value * tick / 4
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.1f}</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" text-anchor="middle">{unit}</text>'
    )
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = left + index * step + step * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{y(value):.1f}" width="{step * 0.7:.1f}" height="{top + plot_h - y(value):.1f}" fill="#4a7ab7"/>'
        )
        parts.append(f'<text x="{x + step * 0.35:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{label}</text>')
    median = statistics.median(values)
    parts.append(
        f'<line x1="{left}" y1="{y(median):.1f}" x2="{left + plot_w}" y2="{y(median):.1f}" stroke="#333" stroke-dasharray="6 4"/>'
    )
    parts.append(f'<text x="{left + plot_w - 4}" y="{y(median) - 4:.1f}" text-anchor="end">median {median:.2f}</text>')
    if limit is not None:
        parts.append(
            f'<line x1="{left}" y1="{y(limit):.1f}" x2="{left + plot_w}" y2="{y(limit):.1f}" stroke="#c0392b"/>'
        )
        parts.append(f'<text x="{left + 4}" y="{y(limit) - 4:.1f}" fill="#c0392b">limit {limit:.2f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def svg_frame(width: int, height: int, title: str, *, left: int, top: int, plot_w: int, plot_h: int) -> list[str]:
    """The opening of a plot: the SVG element, a white page, the title and the two axes."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
    ]
