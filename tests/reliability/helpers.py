"""Shared set-up for the reliability parts: a tiny dataset, space and search command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import TINY_SPACE, write_colour_dataset


def tiny_search(root: Path, *, study: str = "r", head_epochs: int = 3,
                finetune_epochs: int = 2) -> tuple[Path, Path, list[str]]:
    """(data dir, studies dir, CLI args without --trials) for a tiny_cnn search."""
    data = write_colour_dataset(root / "data", {"red": 16, "green": 16, "blue": 16})
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=head_epochs,
                                       finetune_epochs=finetune_epochs))
    studies = root / "studies"
    args = [sys.executable, "-m", "tlsearch.cli", "search", str(data), "--space", str(space),
            "--study", study, "--out", str(studies), "--weights", "none", "--cache-dir",
            str(root / "cache"), "--pruner", "none", "--no-baselines"]
    return data, studies, args


def load_study(studies: Path, name: str = "r"):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(study_name=name, storage=JournalStorage(
        JournalFileBackend(str(studies / name / "journal.log"))))


ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
