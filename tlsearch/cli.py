"""The `tlsearch` command line: parse, call one library function, print.

No TensorFlow at import time: every command imports what it needs inside its body,
so `tlsearch --help` and each command's `--help` stay instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="tlsearch",
    help="Find which pretrained backbone to fine-tune on your images, and exactly how.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

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


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the demo dataset into.")],
    size: Annotated[int, typer.Option(min=16, max=512, help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for the class subsampling.")] = 0,
) -> None:
    """Write the built-in demo dataset (scikit-learn's digits as RGB PNGs, imbalanced)."""
    from tlsearch.demo import DemoDataError, write_demo_data

    try:
        summary = write_demo_data(out_dir, size=size, seed=seed)
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
    """List the registered backbones and whether their ImageNet weights are cached."""
    from tlsearch.backbones import keras_models_dir, list_specs, weights_cached

    table = Table(title="Backbones", header_style="bold")
    for column in ("name", "default size", "min size", "preprocessing", "blocks", "params",
                   "GFLOPs", "ImageNet weights"):
        table.add_column(column, justify="right" if column in ("params", "GFLOPs") else "left")
    for spec in list_specs(include_test=include_test):
        family = "built in" if spec.family == "none" else spec.family
        cached = "n/a" if spec.imagenet_file is None else (
            "cached" if weights_cached(spec) else "not cached")
        table.add_row(spec.name, str(spec.default_size), str(spec.min_size), family,
                      str(spec.n_blocks), f"{spec.params / 1e6:.1f}M", f"{spec.gflops:g}", cached)
    console.print(table)
    console.print(f"Keras weights cache: {escape(str(keras_models_dir()))}")


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
