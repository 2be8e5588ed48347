"""Interactive HTML of a figure without a JavaScript library: the PNG, embedded, under an image map.

Every drawn point (`Drawn.points`) becomes a hover area: pointing at it shows the trial's or
config's values in a tooltip (and as the area's `title`, which any browser shows). A table of the
points follows the figure. One self-contained file: no network, nothing beside it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from impress.plots import Drawn

__all__ = ["write_html"]

RADIUS = 7  # pixels around a point that answer to the pointer

_SCRIPT = """
const tip = document.getElementById('tip');
document.querySelectorAll('area').forEach(a => {
  a.addEventListener('mousemove', e => {
    tip.textContent = a.dataset.tip; tip.style.display = 'block';
    tip.style.left = (e.pageX + 14) + 'px'; tip.style.top = (e.pageY + 14) + 'px';
  });
  a.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
});
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
#tip { position: absolute; display: none; background: #fffbe6; border: 1px solid #999; padding: 4px 8px;
       white-space: pre; font: 12px monospace; pointer-events: none; }
table { border-collapse: collapse; font-size: 12px; margin-top: 1em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; white-space: pre; }
"""


def write_html(drawn: Drawn, path: str | Path, *, title: str, table: pd.DataFrame | None = None) -> Path:
    """`path`: the figure with a hover tooltip on every point, then `table` (default: the points)."""
    png = base64.b64encode(drawn.path.read_bytes()).decode("ascii")
    w, h = drawn.size
    areas = []
    # NOTE: later areas lie under earlier ones, so the front and config means go first
    order = drawn.points.assign(rank=drawn.points["kind"].map({"config": 0, "trial": 1}).fillna(2)).sort_values("rank")
    for _, p in order.iterrows():
        tip = html.escape(str(p["tip"]), quote=True)
        areas.append(
            f'<area shape="circle" coords="{p["px"]:.0f},{p["py"]:.0f},{RADIUS}" '
            f'title="{tip}" data-tip="{tip}" data-kind="{p["kind"]}" data-front="{int(p["on_front"])}" '
            f'alt="{html.escape(str(p["label"]), quote=True)}">'
        )
    if table is None:
        table = drawn.points[["kind", "label", "tip"]]
    body = [
        f"<h2>{html.escape(title)}</h2>",
        f'<img src="data:image/png;base64,{png}" width="{w}" height="{h}" usemap="#points" alt="{html.escape(title)}">',
        '<map name="points">',
        *areas,
        "</map>",
        '<div id="tip"></div>',
        table.to_html(index=False, na_rep="", border=0, escape=True),
    ]
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + f"\n<script>{_SCRIPT}</script></body></html>\n"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
