"""The report's "vs baseline" card: each regression check against the baseline run, at the top."""

from __future__ import annotations

import html
from pathlib import Path


def baseline_card(manifest: dict) -> str:
    """Return the card's HTML ('' when the run had no baseline)."""
    reg = manifest.get("regression")
    if not reg:
        return ""
    ok = not reg.get("regressed") and not reg.get("error")
    rows = "".join(f"<tr><th>{html.escape(c['name'])}</th><td class='{'failed' if c['status'] == 'failed' else 'passed' if c['status'] == 'passed' else 'skipped'}'>"
                   f"{html.escape('REGRESSION' if c['status'] == 'failed' else c['status'])}</td>"
                   f"<td>{html.escape(c['message'])}</td></tr>" for c in reg.get("checks") or [])
    if reg.get("error"):
        rows += f"<tr><th>comparison</th><td class='failed'>error</td><td>{html.escape(reg['error'])}</td></tr>"
    head = "no regression" if ok else "REGRESSION" if reg.get("regressed") else "not compared"
    colour = "#2e7d32" if ok else "#b00020"
    return (f"<section id='vs-baseline' style='border:2px solid {colour};border-radius:8px;padding:4px 14px 10px;margin:10px 0'><h2>vs baseline <span class='{'passed' if ok else 'failed'}'>"
            f"{html.escape(head)}</span></h2><p>baseline <code>{html.escape(Path(str(reg.get('baseline', '?'))).name)}</code>"
            f" ({html.escape(str(reg.get('spec', '')))}); {html.escape(str(reg.get('summary', '')))}. Both models were "
            f"evaluated on the same images and timed interleaved in this process (paired).</p>"
            f"<table>{rows}</table></section>")
