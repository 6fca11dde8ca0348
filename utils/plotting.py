"""Plot helpers on plotly (and a small attention view of our own) that every chapter shares.

Each returns a figure (or an HTML view) so a cell that ends with the call shows it. Figures set a
height but no width: they take the width of their container (a narrow JupyterLab pane, Colab, the
book's column), where a fixed 650 px clipped long titles.
"""

from __future__ import annotations

import base64
import html
import json
import uuid
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from IPython.display import HTML


def _to_numpy(values):
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return values


def heatmap(values, x: Sequence | None = None, y: Sequence | None = None, title: str = "",
            x_label: str = "", y_label: str = "", diverging: bool = True, text_auto: bool | str = False) -> go.Figure:
    """A 2-D heatmap; `diverging` centres a red-blue scale on zero (for signed quantities)."""
    z = _to_numpy(values)
    colour = dict(colorscale="RdBu", zmid=0, reversescale=True) if diverging else dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(z=z, x=list(x) if x is not None else None,
                               y=list(y) if y is not None else None, **colour))
    if text_auto:
        fig.update_traces(texttemplate="%{z:" + (text_auto if isinstance(text_auto, str) else ".2f") + "}")
    fig.update_layout(title=title, xaxis_title=x_label, yaxis_title=y_label, yaxis_autorange="reversed",
                      autosize=True, height=450)
    return fig


def lines(series: dict[str, Sequence] | Sequence, x: Sequence | None = None, title: str = "",
          x_label: str = "", y_label: str = "", markers: bool = True) -> go.Figure:
    """One or more lines; pass a dict name -> values for several."""
    if not isinstance(series, dict):
        series = {"": series}
    fig = go.Figure()
    for name, values in series.items():
        values = _to_numpy(values)
        fig.add_trace(go.Scatter(x=list(x) if x is not None else None, y=list(values), name=name,
                                 mode="lines+markers" if markers else "lines"))
    fig.update_layout(title=title, xaxis_title=x_label, yaxis_title=y_label, autosize=True, height=400,
                      showlegend=len(series) > 1)
    return fig


def bars(values: Sequence, labels: Sequence[str], title: str = "", y_label: str = "") -> go.Figure:
    """A bar chart of one value per label."""
    fig = go.Figure(go.Bar(x=list(labels), y=list(_to_numpy(values))))
    fig.update_layout(title=title, yaxis_title=y_label, autosize=True, height=400)
    return fig


def _head_index(focus, names: list[str]) -> int:
    """The index of the head `focus` names: an index, or one of `names` ("L3H1")."""
    if isinstance(focus, str):
        if focus not in names:
            raise ValueError(f"focus {focus!r} is not one of the head names {names}")
        return names.index(focus)
    index = int(focus)
    if not -len(names) <= index < len(names):
        raise ValueError(f"focus {index} is out of range for {len(names)} heads")
    return index % len(names)


def _patterns_and_names(str_tokens: Sequence[str], pattern, head_names: Sequence[str] | None):
    """`pattern` as a float [head, query, key] tensor checked against the tokens, and a name per head."""
    pattern = torch.as_tensor(_to_numpy(pattern)).float()
    if pattern.dim() != 3 or pattern.shape[1:] != (len(str_tokens), len(str_tokens)):
        raise ValueError(f"pattern must be [head, {len(str_tokens)}, {len(str_tokens)}] for these tokens, "
                         f"got {list(pattern.shape)}")
    names = [str(name) for name in head_names] if head_names else [f"head {i}" for i in range(pattern.shape[0])]
    if len(names) != pattern.shape[0]:
        raise ValueError(f"{len(names)} head names for {pattern.shape[0]} heads")
    return pattern, names


def attention_patterns(str_tokens: Sequence[str], pattern, head_names: Sequence[str] | None = None,
                       focus: int | str = 0, query: int | None = -1) -> HTML:
    """Interactive attention patterns for one prompt: a thumbnail per head, and one head drawn large.

    `pattern` is [head_index, query_pos, key_pos]. `focus` is the head drawn large when the view
    opens (an index, or a name from `head_names` such as "L3H1": the head the text discusses);
    `query` is the destination position whose row is outlined and read out at first (the last
    token by default; None for none). Click a thumbnail to draw another head, hover over a cell
    to read one weight.

    The view is a few kilobytes of JavaScript written here, with the weights stored as one byte
    each (steps of 1/255): circuitsvis's `attention_heads` inlines its whole 1.4 MB bundle in
    every view (`circuitsvis.utils.render.render_local`) and opens on head 0, so three views made
    a saved chapter weigh 5 MB. Nothing is loaded from the network: it draws offline, in
    JupyterLab, on Colab (each output is its own frame, so each view carries its own script) and
    in the book. The large head is at most 560 px square (one screen with the thumbnails, for the
    41-token prompts of chapter 03), so the view needs no scroll box of its own.
    """
    pattern, names = _patterns_and_names(str_tokens, pattern, head_names)
    n_tokens = len(str_tokens)
    if query is not None and not -n_tokens <= int(query) < n_tokens:
        raise ValueError(f"query {query} is out of range for {n_tokens} tokens")
    weights = (pattern.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes()
    data = dict(tokens=[str(token) for token in str_tokens], names=names, focus=_head_index(focus, names),
                query=None if query is None else int(query) % n_tokens,
                weights=base64.b64encode(weights).decode("ascii"))
    view_id = f"wb-attention-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(data).replace("</", "<\\/")  # a token "</script>" must not end the script
    return HTML(f'<div id="{view_id}" class="wb-attention" style="{_ATTENTION_STYLE}">'
                f'<div class="wb-readout">{html.escape(names[data["focus"]])}: an interactive view '
                f'(it needs JavaScript: run the cell in Jupyter or open the notebook on Colab).</div></div>'
                f'<script>{_ATTENTION_SCRIPT}("{view_id}", {payload});</script>')


def circuitsvis_attention(str_tokens: Sequence[str], pattern, head_names: Sequence[str] | None = None,
                          focus: int | str = 0):
    """The same patterns in circuitsvis (`circuitsvis.attention.attention_heads`), the field's
    viewer, opening on the head `focus` names (circuitsvis opens on its first head, so that head is
    moved first; every head keeps its name). Online it loads its script from a CDN; offline each
    view inlines circuitsvis's 1.3 MB bundle, which is why the chapters use `attention_patterns`."""
    import circuitsvis as cv

    pattern, names = _patterns_and_names(str_tokens, pattern, head_names)
    first = _head_index(focus, names)
    order = [first, *(h for h in range(len(names)) if h != first)]
    return cv.attention.attention_heads(attention=pattern[order], tokens=[str(t) for t in str_tokens],
                                        attention_head_names=[names[h] for h in order])


_ATTENTION_STYLE = "font-family: sans-serif; font-size: 12px; margin: 10px 0; max-width: 100%;"

# One function per view (self-contained, so a view works alone in Colab's per-output frame).
_ATTENTION_SCRIPT = """(function (id, d) {
  const root = document.getElementById(id); if (!root) return;
  const n = d.tokens.length, heads = d.names.length, raw = atob(d.weights);
  const w = (h, q, k) => raw.charCodeAt((h * n + q) * n + k) / 255;
  const label = t => JSON.stringify(t).slice(1, -1);
  const colour = v => `rgba(33, 102, 172, ${v.toFixed(3)})`;
  let shown = d.focus;
  root.innerHTML = "";
  const bar = document.createElement("div"); bar.style.cssText = "display:flex;flex-wrap:wrap;gap:6px;margin-bottom:6px";
  const readout = document.createElement("div"); readout.className = "wb-readout"; readout.style.cssText = "min-height:1.4em;margin:4px 0";
  const zoom = document.createElement("canvas"); zoom.style.display = "block";
  root.append(bar, readout, zoom);
  const ratio = window.devicePixelRatio || 1, thumb = Math.max(40, Math.min(72, 4 * n));
  const thumbs = d.names.map((name, h) => {
    const box = document.createElement("div"); box.style.cssText = "text-align:center;cursor:pointer;padding:2px;border:2px solid transparent";
    const c = document.createElement("canvas"); c.width = c.height = n; c.style.cssText = `width:${thumb}px;height:${thumb}px;image-rendering:pixelated;display:block`;
    const ctx = c.getContext("2d");
    for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) { ctx.fillStyle = colour(w(h, q, k)); ctx.fillRect(k, q, 1, 1); }
    const caption = document.createElement("div"); caption.textContent = name;
    box.append(c, caption); box.title = `click to draw ${name} large`;
    box.onclick = () => { shown = h; draw(); };
    bar.append(box); return box;
  });
  const ctx = zoom.getContext("2d"); ctx.font = "12px sans-serif";
  const margin = Math.ceil(Math.max(...d.tokens.map(t => ctx.measureText(label(t)).width))) + 8;
  const width = root.clientWidth || 800, cell = Math.max(8, Math.min(28, Math.floor(Math.min(width - margin - 10, 560) / n)));
  const side = margin + n * cell;
  zoom.width = side * ratio; zoom.height = side * ratio; zoom.style.width = zoom.style.height = side + "px";
  function describe(q) {
    const order = [...Array(q + 1).keys()].sort((a, b) => w(shown, q, b) - w(shown, q, a)).slice(0, 3);
    return `${d.names[shown]}, from "${label(d.tokens[q])}" (position ${q}): ` +
      order.map(k => `"${label(d.tokens[k])}" (${k}) ${w(shown, q, k).toFixed(2)}`).join(", ");
  }
  function draw(hover) {
    thumbs.forEach((box, h) => box.style.borderColor = h === shown ? "#d6604d" : "transparent");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0); ctx.clearRect(0, 0, side, side);
    ctx.font = "12px sans-serif"; ctx.fillStyle = "#222"; ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    d.tokens.forEach((t, i) => ctx.fillText(label(t), margin - 4, margin + (i + 0.5) * cell));
    d.tokens.forEach((t, i) => { ctx.save(); ctx.translate(margin + (i + 0.5) * cell, margin - 4); ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left"; ctx.fillText(label(t), 0, 0); ctx.restore(); });
    for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
      ctx.fillStyle = k > q ? "#f4f4f4" : colour(w(shown, q, k)); ctx.fillRect(margin + k * cell, margin + q * cell, cell, cell);
    }
    const row = hover ? hover[0] : d.query;
    if (row !== null && row !== undefined) { ctx.strokeStyle = "#d6604d"; ctx.lineWidth = 2; ctx.strokeRect(margin, margin + row * cell, n * cell, cell); }
    if (hover) readout.textContent = `${d.names[shown]}: "${label(d.tokens[hover[0]])}" (${hover[0]}) attends to "${label(d.tokens[hover[1]])}" (${hover[1]}) with weight ${w(shown, hover[0], hover[1]).toFixed(2)}`;
    else readout.textContent = row === null || row === undefined ? `${d.names[shown]}: rows are destinations, columns sources; hover over a cell` : describe(row);
  }
  zoom.onmousemove = e => { const r = zoom.getBoundingClientRect();
    const k = Math.floor((e.clientX - r.left - margin) / cell), q = Math.floor((e.clientY - r.top - margin) / cell);
    draw(q >= 0 && q < n && k >= 0 && k <= q ? [q, k] : undefined); };
  zoom.onmouseleave = () => draw();
  draw();
})"""
