"""The inspection as one HTML page that any browser opens from disk: no server, no network.

Every picture is inlined as a ``data:image/png`` URI and the page's Content-Security-Policy allows nothing
else to load. One table per run (two side by side with ``--compare``): layers as rows, images as columns.
A click on a picture (or the page opened at ``inspect.html#zoom=ID``, ID as ``t0-r1-c2``: table, row,
column) shows it enlarged with its caption; a click
or Escape closes it. Once loaded, the page writes how many of its pictures decoded into ``<body>``'s
``data-images`` and ``data-decoded`` attributes, which the tests read from a headless browser.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    """One picture of the page."""

    png: bytes
    caption: str  # shown on hover and under the enlarged picture


@dataclass
class Row:
    """One layer (or the input, or a Grad-CAM class): one cell per image, or one cell across all columns."""

    label: str
    note: str = ""  # a second line under the label: the output's shape, the class of the map
    cells: list[Cell | None] = field(default_factory=list)
    across: bool = False  # one picture for the whole row (the first conv's kernels)


@dataclass
class Table:
    """One run's rows."""

    title: str
    lines: list[str]  # under the title: checkpoint, accuracy, the Grad-CAM layer
    columns: list[list[str]]  # each image's heading lines
    rows: list[Row]


def png_bytes(image: Any) -> bytes:
    """A Pillow image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0; }
.runs { display: flex; gap: 32px; align-items: flex-start; }
.run p { margin: 2px 0; color: #555; }
table { border-collapse: collapse; margin-top: 8px; }
th, td { padding: 4px 6px; border-bottom: 1px solid #eee; vertical-align: middle; }
thead th { font-weight: normal; white-space: pre-line; font-size: 12px; }
th.layer { text-align: left; font-weight: 600; min-width: 110px; max-width: 190px; }
th.layer span { display: block; font-weight: normal; color: #666; font-size: 12px; }
td img { display: block; max-width: 150px; max-height: 150px; min-width: 56px; image-rendering: pixelated;
         cursor: zoom-in; }
td.across img { max-width: 100%; }
td img:hover { outline: 2px solid #d33; }
#zoom { position: fixed; inset: 0; background: rgba(0, 0, 0, .86); display: none; flex-direction: column;
        align-items: center; justify-content: center; cursor: zoom-out; }
#zoom.open { display: flex; }
#zoom img { width: min(92vw, 84vh); height: min(92vw, 84vh); object-fit: contain; image-rendering: pixelated;
            background: #fff; }
#zoom p { color: #fff; margin: 8px; }
"""

_SCRIPT = """
const zoom = document.getElementById('zoom');
const big = zoom.querySelector('img');
const caption = zoom.querySelector('p');
function enlarge(img) { big.src = img.src; caption.textContent = img.title; zoom.className = 'open'; }
document.querySelectorAll('td img').forEach(img => img.addEventListener('click', () => enlarge(img)));
zoom.addEventListener('click', () => { zoom.className = ''; });
document.addEventListener('keydown', e => { if (e.key === 'Escape') zoom.className = ''; });
window.addEventListener('load', () => {
  const pictures = [...document.querySelectorAll('td img')];
  document.body.dataset.images = pictures.length;
  document.body.dataset.decoded = pictures.filter(p => p.complete && p.naturalWidth > 0).length;
  const asked = location.hash.match(/^#zoom=(.+)$/);  // inspect.html#zoom=t0-r1-c2 opens that picture
  const target = asked && document.getElementById(asked[1]);
  if (target) enlarge(target);
});
"""

# Only inline styles, inline scripts and data: pictures: the page cannot reach the network.
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _img(cell: Cell, ident: str) -> str:
    data = base64.b64encode(cell.png).decode("ascii")
    caption = html.escape(cell.caption, quote=True)
    return f'<img id="{ident}" src="data:image/png;base64,{data}" title="{caption}" alt="{caption}">'


def _table(t: int, table: Table) -> str:
    head = "".join(f"<th>{html.escape(chr(10).join(lines))}</th>" for lines in table.columns)
    body = []
    for r, row in enumerate(table.rows):
        label = f'<th class="layer">{html.escape(row.label)}<span>{html.escape(row.note)}</span></th>'
        if row.across:
            cell = row.cells[0]
            cells = f'<td class="across" colspan="{len(table.columns)}">{_img(cell, f"t{t}-r{r}-c0")}</td>' \
                if cell else "<td></td>"
        else:
            cells = "".join(f"<td>{_img(cell, f't{t}-r{r}-c{c}')}</td>" if cell else "<td></td>"
                            for c, cell in enumerate(row.cells))
        body.append(f"<tr>{label}{cells}</tr>")
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in table.lines)
    return (f'<section class="run"><h2>{html.escape(table.title)}</h2>{lines}'
            f'<table><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></section>')


def page_html(title: str, tables: Sequence[Table], notes: Sequence[str] = ()) -> str:
    """The whole page as one string."""
    runs = "".join(_table(t, table) for t, table in enumerate(tables))
    notes_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{notes_html}<div class=\"runs\">{runs}</div>"
            f'<div id="zoom"><img alt="enlarged"><p></p></div><script>{_SCRIPT}</script></body></html>')


def write_page(path: Path, title: str, tables: Sequence[Table], notes: Sequence[str] = ()) -> Path:
    path.write_text(page_html(title, tables, notes), encoding="utf-8")
    return path
