"""The retrain flow's run report: a markdown table of every step's metrics with links to its pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPORT_KEY = "retrain-report"


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3g}"


def render(summary: dict[str, Any], results: dict[str, dict[str, Any]], max_rows: int = 12) -> str:
    """Markdown: header with lineage, one metrics table per step, links to grids/plots, the decision."""
    lines = [
        "# Tessera retrain",
        "",
        f"- data version: `{summary.get('data_version')}`",
        f"- MLflow run: `{summary.get('mlflow_run_id')}` (experiment `{summary.get('experiment')}`)",
        f"- tracking URI: `{summary.get('tracking_uri')}`",
        f"- git commit: `{summary.get('git_commit')}`",
        "",
    ]
    for step, res in results.items():
        cached = " (cached)" if res.get("cached") else ""
        lines += [f"## {step}{cached}", "", "| metric | value |", "|---|---|"]
        metrics = res.get("metrics", {})
        keys = sorted(metrics, key=lambda k: (k.count("/"), k))[:max_rows]
        lines += [f"| {k} | {_fmt(metrics[k])} |" for k in keys]
        if len(metrics) > max_rows:
            lines.append(f"| ... | {len(metrics) - max_rows} more in metrics.json |")
        pictures = sorted(Path(res.get("out_dir", ".")).glob("*.png"))
        if pictures:
            lines += ["", " ".join(f"[{p.name}]({p.resolve().as_uri()})" for p in pictures)]
        lines.append("")
    decision = summary.get("decision")
    if decision:
        lines += [
            "## Promotion",
            "",
            f"- promoted: **{decision.get('promoted')}**",
            f"- reason: {decision.get('reason')}",
            f"- versions: {decision.get('versions')}",
            "",
        ]
    return "\n".join(lines)
