"""Shared fixtures: tiny image datasets written by the tests themselves."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]

#: The tiny backbone's search space, formatted with head_epochs and finetune_epochs.
TINY_SPACE = """\
name: tiny
backbones:
  tiny_cnn: [32]
unfreeze_blocks: [0, 1]
head_epochs: {head_epochs}
finetune_epochs: {finetune_epochs}
head_lr: {{low: 1.0e-3, high: 3.0e-2, log: true}}
batch_size: 16
head_dropout: 0.0
"""


def tiny_strategy(**overrides):
    """A two-phase strategy on the tiny backbone (random weights), 32 px."""
    from tlsearch.strategy import Strategy

    base = dict(backbone="tiny_cnn", image_size=32, weights="none", head_epochs=2,
                finetune_epochs=2, unfreeze_blocks=1, bn_mode="frozen", head_lr=3e-2,
                backbone_lr=3e-3, batch_size=16, head_dropout=0.0, seed=1)
    base.update(overrides)
    return Strategy(**base)


def write_colour_dataset(root: Path, counts: dict[str, int], *, size: int = 32,
                         seed: int = 0, noise: float = 45.0) -> Path:
    """Classes that differ by dominant colour plus noise: learnable through a random
    frozen backbone (colour survives random convolutions and pooling)."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array(COLOURS[k % len(COLOURS)], dtype=np.float32)
        for i in range(n):
            img = base + rng.normal(0, noise, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def colour_data(tmp_path) -> Path:
    return write_colour_dataset(tmp_path / "data", {"red": 30, "green": 30, "blue": 30})


@pytest.fixture
def trial_data(colour_data, tmp_path):
    from tlsearch.data import make_split, scan
    from tlsearch.trial_data import TrialData

    index = scan(colour_data)
    split = make_split(index, val_fraction=0.3, seed=0)
    return TrialData.from_split(colour_data, split, tmp_path / "cache")


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory) -> Path:
    """The folder of one finished search, run once per session for the tests that read
    or export a study without caring how it was searched: `data/` (3 colour classes of
    15 images), `studies/s` (3 sampled trials of 2 head and 1 fine-tuning epoch, no
    baselines or ranking, a 20% held-out test split), `cache/`. Opening a study writes
    to it, so tests use a copy (`study_copy`), never this folder."""
    from tlsearch.search import SearchConfig, run_search

    root = tmp_path_factory.mktemp("finished")
    data = write_colour_dataset(root / "data", {"red": 15, "green": 15, "blue": 15})
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1))
    run_search(SearchConfig(data_dir=str(data), space=str(space), study="s", trials=3,
                            out=str(root / "studies"), weights="none", pruner="none",
                            cache_dir=str(root / "cache"), baselines=False, rank=False,
                            test_fraction=0.2))
    return root


@pytest.fixture
def study_copy(finished_study, tmp_path) -> tuple[Path, Path]:
    """(studies folder, data folder): `finished_study`'s studies copied into this test's
    folder (study `s`), the shared data read where it is."""
    studies = tmp_path / "studies"
    shutil.copytree(finished_study / "studies", studies)
    return studies, finished_study / "data"


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a real PostgreSQL server started for this test session on loopback."""
    from tests.postgres import postgres_server, server_bindir

    if server_bindir() is None:
        pytest.skip("PostgreSQL is not installed here (.ci/run installs Debian's postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install -e '.[dev]')")
    with postgres_server() as url:
        yield url


@pytest.fixture
def small_study(tmp_path):
    """(tmp_path, data, space) for a search on the tiny backbone: 3 colour classes of
    16 images, 2 head epochs and 1 fine-tuning epoch."""
    data = write_colour_dataset(tmp_path / "data", {"red": 16, "green": 16, "blue": 16})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1))
    return tmp_path, data, space
