"""Plotly figures for the report, built from the plain context of `context.py`.

Every figure leaves as a JSON string that is safe inside an HTML ``<script>``
element (`script_json`): ``<``, ``>`` and ``&`` are written as ``\\u003c`` etc., so
no string in it (a class named ``</script>``) can end the element. Plotly renders
label text as a small HTML subset (``<b>``, ``<a href>``...), so dataset strings are
HTML-escaped before they become labels (`label`): they show literally.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from markupsafe import Markup

__all__ = ["figures", "label", "script_json"]

_FONT = "-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
_BLUE, _ORANGE, _GREY, _RED, _GREEN = "#2563eb", "#ea580c", "#9ca3af", "#dc2626", "#16a34a"
_TRIAL_SCALE = [[0.0, "#bfdbfe"], [1.0, "#1e3a8a"]]  # early trials light, late dark
_CONFIG = {"displaylogo": False, "responsive": True,
           "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(data: Any) -> Markup:
    """JSON (a string of JSON, or data to encode) made safe to embed in ``<script>``."""
    text = data if isinstance(data, str) else json.dumps(data, default=str)
    for char, escape in _JSON_ESCAPES.items():
        text = text.replace(char, escape)
    return Markup(text)


def label(text: Any) -> str:
    """A string shown by plotly, escaped so its pseudo-HTML shows literally."""
    return html.escape(str(text), quote=True)


def _layout(fig: Any, *, height: int, **extra: Any) -> None:
    layout = {"template": "plotly_white", "height": height,
              "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
              "font": {"family": _FONT, "size": 12},
              "legend": {"orientation": "h", "y": -0.18}}
    fig.update_layout(**{**layout, **extra})


def _payload(fig: Any) -> Markup:
    return script_json({"figure": json.loads(fig.to_json()), "config": _CONFIG})


# -- the figures -------------------------------------------------------------------------


def history_figure(trials: list[dict[str, Any]], metric_label: str) -> Any:
    """Objective per trial, best so far, pruned and failed trials marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    fig.add_trace(go.Scatter(
        x=[t["number"] for t in done], y=[t["value"] for t in done], mode="markers",
        name="completed", marker={"color": _BLUE, "size": 9},
        text=[label(t["short"]) for t in done],
        hovertemplate="trial #%{x}: %{y:.3f}<br>%{text}<extra></extra>"))
    best, xs, ys = -math.inf, [], []
    for t in sorted(done, key=lambda t: t["number"]):
        best = max(best, t["value"])
        xs.append(t["number"])
        ys.append(best)
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"shape": "hv", "color": _ORANGE},
                                 name="best so far", hoverinfo="skip"))
    pruned = [t for t in trials if t["state"] == "pruned" and t["intermediate"]]
    if pruned:
        fig.add_trace(go.Scatter(
            x=[t["number"] for t in pruned],
            y=[t["intermediate"][max(t["intermediate"])] for t in pruned], mode="markers",
            name="pruned (last reported)", marker={"color": _GREY, "symbol": "x", "size": 8},
            hovertemplate="trial #%{x} pruned at %{y:.3f}<extra></extra>"))
    failed = [t for t in trials if t["state"] == "failed"]
    if failed:
        fig.add_trace(go.Scatter(
            x=[t["number"] for t in failed], y=[0] * len(failed), mode="markers",
            name="failed", marker={"color": _RED, "symbol": "x-thin-open", "size": 10,
                                   "line": {"width": 2}},
            text=[label(t["failure_reason"] or "unknown") for t in failed],
            hovertemplate="trial #%{x} failed: %{text}<extra></extra>"))
    _layout(fig, height=340, xaxis_title="trial", yaxis_title=metric_label)
    if not done:
        fig.update_yaxes(range=[-0.05, 1.05])
    fig.update_xaxes(tickformat="d", dtick=1 if len(trials) <= 20 else None)
    return fig


def importance_figure(values: list[tuple[str, float]]) -> Any:
    import plotly.graph_objects as go

    ordered = sorted(values, key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(
        x=[v for _, v in ordered], y=[label(k) for k, _ in ordered], orientation="h",
        marker={"color": _BLUE}, hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    _layout(fig, height=max(180, 40 * len(ordered) + 80), xaxis_title="importance (sums to 1)",
            margin={"l": 140, "r": 20, "t": 20, "b": 50})
    return fig


def slice_figure(trials: list[dict[str, Any]], searched: dict[str, dict[str, Any]],
                 metric_label: str) -> Any | None:
    """Objective against each searched parameter (one panel per parameter)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    names = [n for n in searched if any(n in t["params"] for t in done)]
    if not names or not done:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[label(n) for n in names],
                        horizontal_spacing=0.08, vertical_spacing=0.5 / rows)
    numbers = [t["number"] for t in done]
    for i, name in enumerate(names):
        row, col = i // cols + 1, i % cols + 1
        dist = searched[name]
        members = [t for t in done if name in t["params"]]
        categorical = dist["kind"] == "categorical"
        xs = [_param_text(name, t["params"][name]) if categorical else t["params"][name]
              for t in members]
        fig.add_trace(go.Scatter(
            x=xs, y=[t["value"] for t in members], mode="markers", showlegend=False,
            marker={"color": [t["number"] for t in members], "colorscale": _TRIAL_SCALE,
                    "cmin": min(numbers), "cmax": max(numbers) + 1, "size": 9,
                    "line": {"width": 1, "color": "#1e3a8a"},
                    "showscale": i == 0,
                    "colorbar": {"title": {"text": "trial"}, "thickness": 10,
                                 "len": min(1.0, 260 / (300 * rows)), "y": 1,
                                 "yanchor": "top"}},
            text=[f"trial #{t['number']}" for t in members],
            hovertemplate="%{text}<br>%{x}: %{y:.3f}<extra></extra>"), row=row, col=col)
        if categorical:
            fig.update_xaxes(type="category", categoryorder="category ascending", row=row,
                             col=col)
        elif dist.get("log"):
            fig.update_xaxes(type="log", row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text=metric_label, row=row, col=col)
    _layout(fig, height=300 * rows + 40)
    return fig


def _param_text(name: str, value: Any) -> str:
    if name == "unfreeze_blocks" and value == -1:
        return "all"
    return label(value)


def curves_figure(curves: list[dict[str, Any]]) -> Any | None:
    """Train vs validation loss and accuracy per top trial, phase boundaries marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not curves:
        return None
    titles = []
    for t in curves:
        head = f"#{t['number']} (rank {t.get('rank')}, {t['value']:.3f})"
        titles += [f"{head}: loss", f"{head}: accuracy"]
    fig = make_subplots(rows=len(curves), cols=2, subplot_titles=titles,
                        vertical_spacing=min(0.12, 0.35 / len(curves)),
                        horizontal_spacing=0.08)
    series = (("train_loss", "train", 1, "solid", _BLUE), ("val_loss", "validation", 1, "dash",
                                                             _ORANGE),
              ("train_accuracy", "train", 2, "solid", _BLUE),
              ("val_accuracy", "validation", 2, "dash", _ORANGE))
    for r, t in enumerate(curves, start=1):
        hist = t["history"]
        steps = [h["step"] for h in hist]
        for key, name, col, dash, colour in series:
            fig.add_trace(go.Scatter(
                x=steps, y=[h.get(key) for h in hist], mode="lines+markers", name=name,
                legendgroup=name, showlegend=(r == 1 and col == 1),
                line={"dash": dash, "color": colour}, marker={"size": 5},
                hovertemplate=f"step %{{x}}: %{{y:.3f}} ({name})<extra></extra>"), row=r, col=col)
        best_step = t["metrics"].get("best_step")
        for prev, cur in zip(hist, hist[1:], strict=False):
            if prev.get("phase_index") == cur.get("phase_index"):
                continue
            blocks = cur.get("unfrozen_blocks")
            text = ("unfreeze all" if blocks == -1 else f"unfreeze {blocks}") if blocks else "head"
            fig.add_vline(x=cur["step"] - 0.5, line={"dash": "dot", "color": _GREY}, row=r,
                          col=1)
            fig.add_vline(x=cur["step"] - 0.5, line={"dash": "dot", "color": _GREY}, row=r,
                          col=2, annotation_text=text, annotation_position="bottom right",
                          annotation_font={"size": 10, "color": "#6b7280"})
        if best_step is not None:
            fig.add_vline(x=best_step, line={"color": _GREEN, "width": 1}, row=r, col=2,
                          annotation_text="kept", annotation_position="top left",
                          annotation_font={"size": 10, "color": _GREEN})
        fig.update_yaxes(range=[0, 1.02], row=r, col=2)
        fig.update_xaxes(dtick=1 if len(steps) <= 20 else None, row=r)
    fig.update_xaxes(title_text="epoch (global step)", row=len(curves))
    _layout(fig, height=250 * len(curves) + 110,
            legend={"orientation": "h", "yref": "container", "y": 0.995, "yanchor": "top",
                    "x": 0, "xanchor": "left"},
            margin={"l": 60, "r": 20, "t": 80, "b": 50})
    return fig


def confusion_figure(classes: list[str], matrix: list[list[int]]) -> Any:
    """Row-normalised confusion matrix (recall per cell) with counts written in."""
    import plotly.graph_objects as go

    names = [label(c) for c in classes]
    z = []
    for row in matrix:
        total = sum(row)
        z.append([v / total if total else 0.0 for v in row])
    n = len(classes)
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, text=[[str(v) for v in row] for row in matrix],
        texttemplate="%{text}" if n <= 20 else None, colorscale="Blues", zmin=0, zmax=1,
        colorbar={"title": {"text": "share of<br>true class"}, "thickness": 12},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} images (%{z:.0%} of the class)"
                      "<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="true class", type="category")
    fig.update_xaxes(title_text="predicted class", type="category", side="bottom")
    size = min(900, max(320, 34 * n + 180))
    _layout(fig, height=size, margin={"l": 120, "r": 20, "t": 20, "b": 110})
    return fig


def cost_figure(cost: dict[str, Any], metric_label: str) -> Any | None:
    """Objective against training time and CPU latency, Pareto front marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("time", "time_front", "trial time (s)"),
              ("latency", "latency_front", "CPU latency per image (ms)")]
    panels = [p for p in panels if cost.get(p[0])]
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.1,
                        subplot_titles=[f"{metric_label} vs {p[2]}" for p in panels])
    for col, (key, front_key, title) in enumerate(panels, start=1):
        points = cost[key]
        front = set(cost[front_key])
        others = [p for p in points if p[0] not in front]
        on = sorted((p for p in points if p[0] in front), key=lambda p: p[2])
        fig.add_trace(go.Scatter(
            x=[p[2] for p in others], y=[p[1] for p in others], mode="markers",
            marker={"color": _GREY, "size": 8}, name="dominated", legendgroup="dominated",
            showlegend=col == 1, text=[f"trial #{p[0]}" for p in others],
            hovertemplate="%{text}<br>%{x:.3g}: %{y:.3f}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[p[2] for p in on], y=[p[1] for p in on], mode="lines+markers",
            line={"shape": "hv", "color": _ORANGE}, marker={"color": _ORANGE, "size": 10},
            name="Pareto front", legendgroup="front", showlegend=col == 1,
            text=[f"trial #{p[0]}" for p in on],
            hovertemplate="%{text}<br>%{x:.3g}: %{y:.3f}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=title, type="log", row=1, col=col)
    fig.update_yaxes(title_text=metric_label, row=1, col=1)
    _layout(fig, height=360)
    return fig


def figures(context: dict[str, Any]) -> dict[str, Markup]:
    """Every figure the context supports, as script-safe JSON payloads by name."""
    out: dict[str, Markup] = {}
    trials, metric_label = context["trials"], context["metric_label"]
    if any(t["state"] in ("complete", "pruned", "failed") for t in trials):
        out["history"] = _payload(history_figure(trials, metric_label))
    if context["importance"]["values"]:
        out["importance"] = _payload(importance_figure(context["importance"]["values"]))
    candidates = {
        "slices": lambda: slice_figure(trials, context["searched"], metric_label),
        "curves": lambda: curves_figure(context["curves"]),
        "cost": lambda: cost_figure(context["cost"], metric_label),
    }
    best_model = context.get("best_model")
    if best_model and best_model.get("confusion"):
        candidates["confusion"] = lambda: confusion_figure(best_model["classes"],
                                                           best_model["confusion"])
    for name, make in candidates.items():
        fig = make()
        if fig is not None:
            out[name] = _payload(fig)
    return out
