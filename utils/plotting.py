"""Plot helpers on plotly (and circuitsvis for attention) that every chapter shares.

Each returns a figure (or an HTML view) so a cell that ends with the call shows it. Figures set a
height but no width: they take the width of their container (a narrow JupyterLab pane, Colab, the
book's column), where a fixed 650 px clipped long titles.
"""

from __future__ import annotations

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


def attention_patterns(str_tokens: Sequence[str], pattern, head_names: Sequence[str] | None = None) -> HTML:
    """Interactive attention patterns (circuitsvis) for one prompt.

    `pattern` is [head_index, query_pos, key_pos]. The view carries its own JavaScript, so it
    draws offline too.
    """
    import circuitsvis as cv

    pattern = torch.as_tensor(_to_numpy(pattern))
    if pattern.dim() != 3 or pattern.shape[1:] != (len(str_tokens), len(str_tokens)):
        raise ValueError(f"pattern must be [head, {len(str_tokens)}, {len(str_tokens)}] for these tokens, "
                         f"got {list(pattern.shape)}")
    names = list(head_names) if head_names else [f"head {i}" for i in range(pattern.shape[0])]
    view = cv.attention.attention_heads(attention=pattern, tokens=list(str_tokens), attention_head_names=names)
    # The view draws every head's thumbnail above a zoomed pattern (about 1,100 px for 8 heads and
    # 15 tokens); a box of at most 700 px keeps it within one screen, and scrolls for the rest.
    return HTML(f'<div style="max-height: {ATTENTION_VIEW_MAX_HEIGHT}px; overflow-y: auto;">{view.local_src}</div>')


ATTENTION_VIEW_MAX_HEIGHT = 700  # pixels; a laptop screen shows about 800 below the browser's bars
