"""One self-contained HTML file: inline CSS, figures embedded as data URIs, no external assets."""

from __future__ import annotations

import base64
import html
from typing import Optional

from .._version import __version__
from . import tables
from .plots import ReportFigure

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d8dee4; --bg:#f6f8fa; --accent:#0072B2; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: var(--fg); background: white; }
header { background: linear-gradient(90deg, #0b3d5c, #0072B2); color: white; padding: 22px 40px 18px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; letter-spacing: .2px; }
header p { margin: 0; opacity: .85; font-size: 13.5px; }
main { max-width: 1280px; margin: 0 auto; padding: 10px 40px 40px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
.runs { display:flex; flex-wrap: wrap; gap: 12px; margin-top: 18px; }
.run { background: var(--bg); border:1px solid var(--line); border-radius: 8px; padding: 10px 14px; font-size: 13px; }
.run b { font-size: 14px; }
.run code { font-size: 12px; color: var(--muted); }
.chip { display:inline-block; border-radius: 10px; padding: 0 8px; margin: 2px 4px 2px 0; color: white; font-size: 12.5px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--bg); font-weight: 600; position: sticky; top: 0; }
td.l, th.l { text-align: left; }
td.src { text-align: left; white-space: normal; word-break: break-all; color: var(--muted); font-size: 12px; max-width: 320px; }
tbody tr:hover { background: #f0f6fc; }
.swatch { display:inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 7px; vertical-align: -1px; }
.caption { color: var(--muted); font-size: 12.5px; margin: 6px 2px 0; max-width: 1000px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 22px; }
figure { margin: 0; background: white; border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
dl { font-size: 13px; display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; }
dt { font-weight: 600; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
dd { margin: 0; color: var(--muted); }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""

SECTIONS = [
    ("overview", "Overview"),
    ("curves", "Test error vs L2 fooling distance, per search"),
    ("accuracy", "Accuracy vs noise σ and attack ε"),
    ("checkpoints", "Every search on one checkpoint"),
]


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _sw(color: str) -> str:
    return f'<span class="swatch" style="background:{color}"></span>'


def _table(head, body, colors: Optional[list] = None, left=2, src_col=None) -> str:
    out = ["<table><thead><tr>"]
    out += [f'<th class="{"l" if i < left or i == src_col else ""}">{_e(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for r, line in enumerate(body):
        out.append("<tr>")
        for i, c in enumerate(line):
            cls = "src" if i == src_col else ("l" if i < left else "")
            sw = _sw(colors[r]) if (i == 0 and colors) else ""
            out.append(f'<td class="{cls}">{sw}{_e(c)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(summary: dict, figures: list[ReportFigure], svgs: dict[str, bytes], color_of: dict[str, str],
                title: str) -> str:
    """The report page. ``svgs`` maps figure names to their SVG bytes (embedded as data URIs);
    ``color_of`` maps checkpoint labels to their plot colour."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{_CSS}</style></head><body>"]
    n_ck = len(summary["checkpoints"])
    n_s = len({r["search"] for r in summary["searches"]})
    parts.append(f"<header><h1>{_e(title)}</h1><p>{n_ck} checkpoint{'s' * (n_ck != 1)} · {n_s} search"
                 f"{'es' * (n_s != 1)} · {len(summary['runs'])} run{'s' * (len(summary['runs']) != 1)} · "
                 f"read from stored per-sample results (nothing re-attacked)</p></header><main>")

    parts.append("<div class='runs'>")
    for r in summary["runs"]:
        chips = "".join(f"<span class='chip' style='background:{color_of.get(c['checkpoint'], '#666')}'>"
                        f"{_e(c['checkpoint'])}</span>" for c in summary["checkpoints"] if c["run"] == r["name"])
        meta = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in r["meta"].items() if not isinstance(v, (dict, list)))
        parts.append(f"<div class='run'><b>run {_e(r['name'])}</b> <code>{_e(r['run_dir'])}</code><br>{chips}"
                     + (f"<br><span style='color:#59636e'>{meta}</span>" if meta else "") + "</div>")
    parts.append("</div>")

    head, body = tables.checkpoint_table_rows(summary)
    colors = [color_of.get(c["checkpoint"], "#666") for c in summary["checkpoints"]]
    parts += ["<h2>Checkpoints</h2>", _table(head, body, colors, src_col=len(head) - 1),
              f"<p class='caption'>{_e(tables.CHECKPOINT_CAPTION)}</p>"]
    head, body = tables.pivot_rows(summary)
    if body:
        sw = "".join(f'<th>{_sw(color_of.get(c, "#666"))}{_e(c)}</th>' for c in head[1:])
        rows = "".join("<tr>" + f"<td class='l'>{_e(line[0])}</td>" + "".join(f"<td>{_e(c)}</td>" for c in line[1:])
                       + "</tr>" for line in body)
        parts += ["<h2>ρ̂<sub>adv</sub> side by side</h2>",
                  f"<table><thead><tr><th class='l'>Search</th>{sw}</tr></thead><tbody>{rows}</tbody></table>",
                  f"<p class='caption'>{_e(tables.PIVOT_CAPTION)}</p>"]
    head, body = tables.search_table_rows(summary)
    colors = [color_of.get(r["checkpoint"], "#666") for r in summary["searches"]]
    parts += ["<h2>Fooling distances and ρ̂<sub>adv</sub></h2>", _table(head, body, colors),
              f"<p class='caption'>{_e(tables.SEARCH_CAPTION)}</p>"]
    head, body = tables.settings_rows(summary)
    if body:
        parts += ["<h2>Search settings</h2>", _table(head, body, left=5),
                  f"<p class='caption'>{_e(tables.SETTINGS_CAPTION)}</p>"]

    for key, heading in SECTIONS:
        figs = [f for f in figures if f.section == key]
        if not figs:
            continue
        parts.append(f"<h2>{_e(heading)}</h2><div class='grid'>")
        for f in figs:
            data = base64.b64encode(svgs[f.name]).decode("ascii")
            parts.append(f"<figure id='{_e(f.name)}'{' class=wide' if f.wide else ''}><img alt='{_e(f.title)}' src='data:image/svg+xml;base64,{data}'>"
                         f"<figcaption>{_e(f.caption)}</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Definitions</h2><dl>")
    for k, v in summary["definitions"].items():
        parts.append(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>")
    parts.append("</dl>")
    parts.append(f"<footer>robustbench-jr {_e(__version__)} · <code>jr-eval report</code> · figures are also "
                 f"written next to this file as PNG and SVG; tables as summary.md/.csv/.json.</footer>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
