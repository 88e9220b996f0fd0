"""GitHub's step summary: a Markdown block per run appended to $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import os
from pathlib import Path


def _mb(n) -> str:
    return f"{n / 2**20:.2f} MB" if isinstance(n, (int, float)) and n else "-"


def markdown(run_dir: str | Path, manifest: dict, exit_code: int) -> str:
    """Return the run's summary as Markdown: verdict, mAP, size, speed, vs baseline, where the report is."""
    from ..report.html import facts

    run_dir = Path(run_dir)
    f = facts(run_dir)
    reg = manifest.get("regression") or {}
    icon = {0: "✅", 3: "📉"}.get(exit_code, "❌")
    word = {0: "passed", 3: "regressed against the baseline"}.get(exit_code, f["status"])
    lines = [f"### {icon} yolo-compile `{f['workflow']}`: {word}", "", f"{f['verdict']}", "",
             "| | |", "|---|---|",
             f"| model | `{f['model']}` (sha256 `{str(f['model_sha256'] or '?')[:12]}`) |",
             f"| recipe / target | {f['recipe'] or '-'} / {f['target'] or '-'} |"]
    if f["map_quant"] is not None and f["map_fp32"] is not None and f["map_drop"] is not None:
        lines.append(f"| mAP50-95 | {f['map_fp32']:.4f} FP32 -> {f['map_quant']:.4f} (drop {f['map_drop']:.2f} points, "
                     f"gate {f['map_drop_max']}) |")
    lines.append(f"| size | {_mb(f['fp32_bytes'])} FP32 -> {_mb(f['engine_bytes'] or f['quant_bytes'])} |")
    tp = f["throughput"]
    if tp.get("verdict"):
        lines.append(f"| speed | {tp['verdict']} |")
    for check in reg.get("checks") or []:
        mark = {"passed": "✅", "failed": "📉", "skipped": "➖"}[check["status"]]
        lines.append(f"| vs baseline: {check['name']} | {mark} {check['message']} |")
    if reg.get("error"):
        lines.append(f"| vs baseline | ❌ {reg['error']} |")
    if reg.get("baseline"):
        lines.append(f"| baseline | `{Path(reg['baseline']).name}` |")
    failed = [(s, v) for s, v in (manifest.get("stages") or {}).items() if v.get("status") == "failed"]
    for s, v in failed:
        lines.append(f"| stage {s} failed | {str(v.get('error') or '')[:300]} |")
    lines += ["", f"Report: `{run_dir / 'report.html'}` (upload the run folder as an artifact); JUnit: "
                  f"`{run_dir / 'junit.xml'}`", ""]
    return "\n".join(line.replace("\n", " ") if line.startswith("|") else line for line in lines) + "\n"


def append(run_dir: str | Path, manifest: dict, exit_code: int) -> Path | None:
    """Append the summary to $GITHUB_STEP_SUMMARY when it is set; return that path (None when unset)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(markdown(run_dir, manifest, exit_code))
    return Path(target)
