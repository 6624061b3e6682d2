"""The study report: one self-contained HTML file that recommends a configuration.

`build_report` reads a study folder (storage, split, trial results), assembles a
plain context (`context.py`), draws the figures (`plots.py`) and renders
`templates/report.html.j2` with Jinja2 autoescaping. The file opens offline:
inline SVG figures (Matplotlib), styles and thumbnails are all inside it. No TensorFlow is
imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlsearch.atomic import atomic_write
from tlsearch.report.context import build_context
from tlsearch.report.wording import display

__all__ = ["build_report", "render_report"]

TEMPLATE = "report.html.j2"
_TEMPLATES = Path(__file__).parent / "templates"


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, lr=_lr, secs=_secs, ds=display)
    return env


def _pct(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * float(value):.{digits}f}%"


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{float(value):.{digits}f}"


def _lr(value: Any) -> str:
    return "—" if value is None else f"{float(value):.2g}"


def _secs(value: Any) -> str:
    if value is None:
        return "—"
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def render_report(context: dict[str, Any]) -> str:
    """Render a context from `build_context` to the HTML text of the report."""
    from tlsearch.report.plots import figures

    env = _environment()
    return env.get_template(TEMPLATE).render(**context, figures=figures(context))


def build_report(study_dir: Path, out: Path | None = None, *, top: int = 5) -> Path:
    """Write the HTML report of a study and return its path.

    Works on a study with no completed trial (the card says so), with trial folders
    that lack a `result.json`, and while a search is still running.

    Args:
        study_dir: the study folder, `<out>/<study>` of the search.
        out: the HTML file to write; default `reports/<study>.html`.
        top: trials on the leaderboard and in the learning curves.

    Raises:
        SearchError: `study_dir` holds no study.
    """
    study_dir = Path(study_dir)
    context = build_context(study_dir, top=top)
    text = render_report(context)
    out = Path(out) if out is not None else Path("reports") / f"{study_dir.name}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)  # a reader (or a browser reloading) never sees half a report
    return out
