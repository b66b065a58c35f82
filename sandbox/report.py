"""A self-contained HTML report: pass@k against k, and each problem's pass rate (inline SVG, no scripts)."""

from __future__ import annotations

import html
from pathlib import Path

from sandbox.scoring import Score

__all__ = ["write_report"]

WIDTH, HEIGHT, PAD = 640, 280, 48


def write_report(path: Path, title: str, result: Score, reruns: int) -> None:
    rows = "".join(
        f"<tr><td>pass@{row.k}</td><td>{_fmt(row.value)}</td><td>{_ci(row.ci95)}</td><td>{row.problems}</td>"
        f"<td>{html.escape(', '.join(row.too_few_samples[:10]))}"
        f"{' …' if len(row.too_few_samples) > 10 else ''}</td></tr>"
        for row in result.table)
    ranked = ("" if result.ranked_pass_at_1 is None
              else f"Ranked pass@1 (highest mean log-probability): {_fmt(result.ranked_pass_at_1)}")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}} svg{{background:#fafafa;border:1px solid #ddd}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{sum(n for n, _ in result.per_problem.values())} samples over {len(result.per_problem)} problems;
{result.infra_errors} infrastructure errors (left out of n); {reruns} timed-out samples were run a second time.
{ranked}</p>
<h2>pass@k</h2>
<table><tr><th>metric</th><th>value</th><th>95% CI (bootstrap over problems)</th><th>problems</th>
<th>problems with fewer than k samples</th></tr>{rows}</table>
<h2>pass@k against k</h2>{_pass_at_k_chart(result)}
<h2>Pass rate per problem</h2>{_per_problem_chart(result)}
</body></html>"""
    path.write_text(page)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.4f} – {ci[1]:.4f}"


def _pass_at_k_chart(result: Score) -> str:
    points = [(row.k, row.value) for row in result.table if row.value is not None]
    if not points:
        return "<p>No k has enough samples.</p>"
    ks = [k for k, _ in points]
    span = max(ks) - min(ks) or 1

    def x(k: int) -> float:
        return PAD + (k - min(ks)) / span * (WIDTH - 2 * PAD)

    def y(v: float) -> float:
        return HEIGHT - PAD - v * (HEIGHT - 2 * PAD)

    line = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in points)
    dots = "".join(f'<circle cx="{x(k):.1f}" cy="{y(v):.1f}" r="4" fill="#2a6"><title>pass@{k} = {v:.4f}</title></circle>'
                   f'<text x="{x(k):.1f}" y="{HEIGHT - PAD + 18}" text-anchor="middle">k={k}</text>'
                   f'<text x="{x(k):.1f}" y="{y(v) - 8:.1f}" text-anchor="middle">{v:.3f}</text>' for k, v in points)
    axes = (f'<line x1="{PAD}" y1="{y(0)}" x2="{WIDTH - PAD}" y2="{y(0)}" stroke="#888"/>'
            f'<line x1="{PAD}" y1="{y(0)}" x2="{PAD}" y2="{y(1)}" stroke="#888"/>'
            f'<text x="{PAD - 6}" y="{y(1) + 4}" text-anchor="end">1.0</text>'
            f'<text x="{PAD - 6}" y="{y(0) + 4}" text-anchor="end">0.0</text>')
    return (f'<svg width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="pass@k against k">{axes}'
            f'<polyline points="{line}" fill="none" stroke="#2a6" stroke-width="2"/>{dots}</svg>')


def _per_problem_chart(result: Score) -> str:
    problems = sorted(result.per_problem.items(), key=lambda item: (-(item[1][1] / item[1][0]) if item[1][0] else 0, item[0]))
    if not problems:
        return "<p>No problems.</p>"
    bar = max(1.0, (WIDTH - 2 * PAD) / len(problems))
    width = int(2 * PAD + bar * len(problems))
    bars = []
    for index, (task, (n, c)) in enumerate(problems):
        rate = c / n if n else 0.0
        height = rate * (HEIGHT - 2 * PAD)
        bars.append(f'<rect x="{PAD + index * bar:.1f}" y="{HEIGHT - PAD - height:.1f}" width="{max(bar - 0.5, 0.5):.1f}" '
                    f'height="{height:.1f}" fill="#36c"><title>{html.escape(task)}: {c}/{n} passed</title></rect>')
    axis = (f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{width - PAD}" y2="{HEIGHT - PAD}" stroke="#888"/>'
            f'<text x="{PAD - 6}" y="{PAD + 4}" text-anchor="end">100%</text>'
            f'<text x="{PAD - 6}" y="{HEIGHT - PAD + 4}" text-anchor="end">0%</text>'
            f'<text x="{PAD}" y="{HEIGHT - PAD + 18}">{len(problems)} problems, best first (hover for names)</text>')
    return f'<svg width="{width}" height="{HEIGHT}" role="img" aria-label="pass rate per problem">{axis}{"".join(bars)}</svg>'
