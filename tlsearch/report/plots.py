"""The report's figures as inline SVG, drawn with Matplotlib from the plain context.

Static SVG keeps the report a small, self-contained file that renders with no script
and no network: the demo study's report went from 5.0 MB (plotly.js inline) to well
under 1 MB (`benchmarks/` has no figure for it; `tests/test_report.py` pins the
budget). Every trial marker carries an SVG ``<title>`` (its number and score), which
browsers show on hover. Matplotlib escapes text for XML itself; mathtext is off, so a
class named ``$x$`` shows literally.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from tlsearch.strategy import ALL_BLOCKS

__all__ = ["figures"]

_BLUE, _ORANGE, _GREY, _RED, _GREEN = "#2563eb", "#ea580c", "#9ca3af", "#dc2626", "#16a34a"
_WIDTH = 9.0  # inches at 72 dpi in the SVG: the report column is about 650-1000 px
_RC = {"svg.fonttype": "none", "svg.hashsalt": "tlsearch", "text.parse_math": False,
       "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
       "axes.grid": True, "grid.color": "#e5e7eb", "grid.linewidth": 0.6,
       "axes.edgecolor": "#9ca3af", "axes.titlesize": 9, "legend.frameon": False,
       "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}

def _figure(height: float, cols: int = 1, rows: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_WIDTH, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _svg(fig: Any, titles: dict[str, Sequence[str]] | None = None) -> Markup:
    """The figure as an ``<svg>`` element; `titles` adds a hover title to each marker of
    the collection with that gid, in drawing order."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML
    text = re.sub(r'<svg ([^>]*?)width="[\d.]+pt" height="[\d.]+pt"',
                  r'<svg \1width="100%" preserveAspectRatio="xMinYMin meet"', text, count=1)
    for gid, names in (titles or {}).items():
        text = _add_titles(text, gid, names)
    return Markup(text)


def _add_titles(text: str, gid: str, names: Sequence[str]) -> str:
    start = text.find(f'<g id="{gid}"')
    if start < 0:
        return text
    depth, end = 0, start
    for tag in re.finditer(r"<g[ >]|</g>", text[start:]):  # the group's own </g>
        depth += -1 if tag.group(0) == "</g>" else 1
        if depth == 0:
            end = start + tag.end()
            break
    group = text[start:end]
    it = iter(names)

    def titled(match: re.Match) -> str:
        name = next(it, None)
        if name is None:
            return match.group(0)
        return f"{match.group(1)}><title>{html.escape(name)}</title></use>"

    group = re.sub(r"(<use [^>]*?)\s*/>", titled, group)
    return text[:start] + group + text[end:]


def _log_x(ax: Any) -> None:
    """A log x axis labelled in plain numbers (the default labels are mathtext)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _scatter(ax: Any, xs: Sequence[Any], ys: Sequence[float], gid: str, **kw: Any) -> Any:
    points = ax.scatter(xs, ys, **kw)
    points.set_gid(gid)
    return points


# -- the figures -------------------------------------------------------------------------


def history_figure(trials: list[dict[str, Any]], metric_label: str) -> Markup:
    """Objective per trial, best so far, pruned and failed trials marked."""
    fig, axes = _figure(3.4)
    ax = axes[0][0]
    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    titles: dict[str, list[str]] = {}
    if done:
        _scatter(ax, [t["number"] for t in done], [t["value"] for t in done], "pts-complete",
                 c=[t["number"] for t in done], cmap="Blues", vmin=-len(trials) / 3,
                 edgecolors="#1e3a8a", linewidths=0.6, s=36, label="completed", zorder=3)
        titles["pts-complete"] = [f"trial #{t['number']}: {t['value']:.3f}" for t in done]
        best, xs, ys = -math.inf, [], []
        for t in sorted(done, key=lambda t: t["number"]):
            best = max(best, t["value"])
            xs.append(t["number"])
            ys.append(best)
        ax.step(xs, ys, where="post", color=_ORANGE, label="best so far", zorder=2)
    pruned = [t for t in trials if t["state"] == "pruned" and t["intermediate"]]
    if pruned:
        values = [t["intermediate"][max(t["intermediate"])] for t in pruned]
        _scatter(ax, [t["number"] for t in pruned], values, "pts-pruned", marker="x",
                 color=_GREY, s=30, label="pruned (last reported)", zorder=3)
        titles["pts-pruned"] = [f"trial #{t['number']} pruned at {v:.3f}"
                                for t, v in zip(pruned, values, strict=True)]
    failed = [t for t in trials if t["state"] == "failed"]
    if failed:
        _scatter(ax, [t["number"] for t in failed], [0] * len(failed), "pts-failed",
                 marker="x", color=_RED, s=40, label="failed", zorder=3)
        titles["pts-failed"] = [f"trial #{t['number']} failed: {t['failure_reason'] or '?'}"
                                for t in failed]
    ax.set_xlabel("trial")
    ax.set_ylabel(metric_label)
    if not done:
        ax.set_ylim(-0.05, 1.05)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig, titles)


def importance_figure(values: list[tuple[str, float]]) -> Markup:
    ordered = sorted(values, key=lambda kv: kv[1])
    fig, axes = _figure(max(1.6, 0.4 * len(ordered) + 0.8))
    ax = axes[0][0]
    bars = ax.barh([k for k, _ in ordered], [v for _, v in ordered], color=_BLUE)
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    ax.set_xlabel("importance (sums to 1)")
    ax.grid(axis="y", visible=False)
    return _svg(fig)


def slice_figure(trials: list[dict[str, Any]], searched: dict[str, dict[str, Any]],
                 metric_label: str) -> Markup | None:
    """Objective against each searched parameter (one panel per parameter)."""
    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    names = [n for n in searched if any(n in t["params"] for t in done)]
    if not names or not done:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = _figure(2.5 * rows + 0.3, cols=cols, rows=rows, sharey=True)
    numbers = [t["number"] for t in done]
    titles = {}
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        dist = searched[name]
        members = [t for t in done if name in t["params"]]
        categorical = dist["kind"] == "categorical"
        raw = [t["params"][name] for t in members]
        if categorical:
            order = sorted({_param_text(name, v) for v in raw})
            xs = [order.index(_param_text(name, v)) for v in raw]
            ax.set_xticks(range(len(order)), order, rotation=25, ha="right", fontsize=7)
            ax.set_xlim(-0.5, len(order) - 0.5)
        else:
            xs = raw
            if dist.get("log"):
                _log_x(ax)
        gid = f"pts-slice-{i}"
        _scatter(ax, xs, [t["value"] for t in members], gid, c=[t["number"] for t in members],
                 cmap="Blues", vmin=min(numbers) - (max(numbers) - min(numbers) + 1) / 3,
                 vmax=max(numbers), edgecolors="#1e3a8a", linewidths=0.6, s=30)
        titles[gid] = [f"trial #{t['number']}: {_param_text(name, t['params'][name])} -> "
                       f"{t['value']:.3f}" for t in members]
        ax.set_title(name)
        if i % cols == 0:
            ax.set_ylabel(metric_label)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    return _svg(fig, titles)


def _param_text(name: str, value: Any) -> str:
    if name == "unfreeze_blocks" and value == ALL_BLOCKS:
        return "all"
    return str(value)


def curves_figure(curves: list[dict[str, Any]]) -> Markup | None:
    """Train vs validation loss and accuracy per top trial, phase boundaries marked."""
    if not curves:
        return None
    fig, axes = _figure(2.2 * len(curves) + 0.4, cols=2, rows=len(curves))
    series = (("train_loss", "train", 0, "-", _BLUE), ("val_loss", "validation", 0, "--", _ORANGE),
              ("train_accuracy", "train", 1, "-", _BLUE),
              ("val_accuracy", "validation", 1, "--", _ORANGE))
    for r, t in enumerate(curves):
        hist = t["history"]
        steps = [h["step"] for h in hist]
        head = f"#{t['number']} (rank {t.get('rank')}, {t['value']:.3f})"
        for key, name, col, style, colour in series:
            values = [h.get(key) for h in hist]
            if all(v is None for v in values):
                continue
            axes[r][col].plot(steps, [math.nan if v is None else v for v in values], style,
                              marker="o", markersize=3, color=colour, label=name)
        axes[r][0].set_title(f"{head}: loss")
        axes[r][1].set_title(f"{head}: accuracy")
        axes[r][1].set_ylim(0, 1.02)
        for prev, cur in zip(hist, hist[1:], strict=False):
            if prev.get("phase_index") == cur.get("phase_index"):
                continue
            blocks = cur.get("unfrozen_blocks")
            text = ("head" if not blocks else "unfreeze all" if blocks == ALL_BLOCKS
                    else f"unfreeze {blocks}")
            for ax in axes[r]:
                ax.axvline(cur["step"] - 0.5, linestyle=":", color=_GREY)
            axes[r][1].annotate(text, (cur["step"] - 0.4, 0.03), fontsize=7, color="#6b7280")
        best_step = t["metrics"].get("best_step")
        if best_step is not None:
            axes[r][1].axvline(best_step, color=_GREEN, linewidth=1)
            axes[r][1].annotate("kept", (best_step, 0.95), fontsize=7, color=_GREEN,
                                ha="right")
        for ax in axes[r]:
            ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[-1]:
        ax.set_xlabel("epoch (global step)")
    axes[0][0].legend(fontsize=8)
    return _svg(fig)


def confusion_figure(classes: list[str], matrix: list[list[int]]) -> Markup:
    """Row-normalised confusion matrix (recall per cell) with counts written in."""
    import numpy as np

    n = len(classes)
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(9.0, max(3.2, 0.34 * n + 1.8))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(_WIDTH, side + 1.4), side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ax.set_xticks(range(n), classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "#1f2937")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    return _svg(fig)


def calibration_figure(calibration: dict[str, Any]) -> Markup:
    """Reliability diagram on the test split: accuracy against confidence per bin,
    before and after temperature scaling; the diagonal is perfect calibration."""
    fig, axes = _figure(3.2, cols=2, sharey=True)
    titles = {}
    for col, (key, title) in enumerate((("reliability_before", "as trained"),
                                        ("reliability_after", "temperature-scaled"))):
        ax = axes[0][col]
        table = calibration[key]
        ax.plot([0, 1], [0, 1], ":", color=_GREY)
        gid = f"pts-calibration-{col}"
        _scatter(ax, table["confidence"], table["accuracy"], gid,
                 s=[12 + 4 * n for n in table["count"]], color=_BLUE if col else _ORANGE,
                 edgecolors="#1e3a8a", linewidths=0.5, zorder=3)
        titles[gid] = [f"{n} images: {c:.0%} confident, {a:.0%} right" for c, a, n in zip(
            table["confidence"], table["accuracy"], table["count"], strict=True)]
        ece = calibration["ece_before" if col == 0 else "ece_after"]
        ax.set_title(f"{title}: calibration error {ece:.1%}")
        ax.set_xlabel("confidence (top probability)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("accuracy on test")
    return _svg(fig, titles)


def cost_figure(cost: dict[str, Any], metric_label: str) -> Markup | None:
    """Objective against training time and CPU latency, Pareto front marked."""
    panels = [("time", "time_front", "trial time (s)"),
              ("latency", "latency_front", "CPU latency per image (ms)")]
    panels = [p for p in panels if cost.get(p[0])]
    if not panels:
        return None
    fig, axes = _figure(3.2, cols=len(panels), sharey=True)
    titles = {}
    for col, (key, front_key, title) in enumerate(panels):
        ax = axes[0][col]
        points = cost[key]
        front = set(cost[front_key])
        others = [p for p in points if p[0] not in front]
        on = sorted((p for p in points if p[0] in front), key=lambda p: p[2])
        if others:
            _scatter(ax, [p[2] for p in others], [p[1] for p in others], f"pts-cost-{col}-d",
                     color=_GREY, s=24, label="dominated")
            titles[f"pts-cost-{col}-d"] = [f"trial #{p[0]}: {p[1]:.3f} at {p[2]:.3g}"
                                           for p in others]
        ax.step([p[2] for p in on], [p[1] for p in on], where="post", color=_ORANGE)
        _scatter(ax, [p[2] for p in on], [p[1] for p in on], f"pts-cost-{col}-f",
                 color=_ORANGE, s=40, label="Pareto front", zorder=3)
        titles[f"pts-cost-{col}-f"] = [f"trial #{p[0]}: {p[1]:.3f} at {p[2]:.3g}" for p in on]
        _log_x(ax)
        ax.set_xlabel(title)
        ax.set_title(f"{metric_label} vs {title}")
    axes[0][0].set_ylabel(metric_label)
    axes[0][0].legend(fontsize=8, loc="lower right")
    return _svg(fig, titles)


def figures(context: dict[str, Any]) -> dict[str, Markup]:
    """Every figure the context supports, as inline SVG by name."""
    import matplotlib

    with matplotlib.rc_context(_RC):  # styles apply when artists are made, too
        return _figures(context)


def _figures(context: dict[str, Any]) -> dict[str, Markup]:
    out: dict[str, Markup] = {}
    trials, metric_label = context["trials"], context["metric_label"]
    if any(t["state"] in ("complete", "pruned", "failed") for t in trials):
        out["history"] = history_figure(trials, metric_label)
    if context["importance"]["values"]:
        out["importance"] = importance_figure(context["importance"]["values"])
    candidates = {
        "slices": lambda: slice_figure(trials, context["searched"], metric_label),
        "curves": lambda: curves_figure(context["curves"]),
        "cost": lambda: cost_figure(context["cost"], metric_label),
    }
    test = (context.get("recommendation") or {}).get("test") or {}
    if test.get("calibration"):
        candidates["calibration"] = lambda: calibration_figure(test["calibration"])
    best_model = context.get("best_model")
    if best_model and best_model.get("confusion"):
        candidates["confusion"] = lambda: confusion_figure(best_model["classes"],
                                                           best_model["confusion"])
    for name, make in candidates.items():
        fig = make()
        if fig is not None:
            out[name] = fig
    return out
