"""The names a user may pass for each of the CLI's choices, defined once and importing
nothing heavy: the library modules that act on them import them from here, and the
CLI builds its choice types from them without loading NumPy, Pillow or Optuna (so
`tlsearch --help` and every command's start stay fast)."""

from __future__ import annotations

__all__ = ["ENGINES", "KINDS", "OBJECTIVES", "ORACLES", "PRUNERS", "RANKERS", "RULES"]

#: The scores a search can maximise (`objective:` in a space, `--metric`).
OBJECTIVES = ("balanced_accuracy", "accuracy", "macro_f1")

#: What proposes the trials: Optuna's sampler and pruner, or a KerasTuner oracle.
ENGINES = ("optuna", "keras-tuner")

#: Optuna's pruners (`--pruner`); the first is the default.
PRUNERS = ("hyperband", "median", "sha", "none")

#: KerasTuner's oracles (`--oracle`).
ORACLES = ("hyperband", "bayesian")

#: Recommendation rules: "best": the top validation score; "1se": the simplest trial
#: within one standard error.
RULES = ("best", "1se")

#: Ranker name -> what it is, in the report's and `rank --help`'s words.
RANKERS = {
    "logme": "LogME evidence of a linear model (You et al., ICML 2021)",
    "knn": "cross-validated cosine 5-NN balanced accuracy on frozen features",
    "hscore": "regularised H-score (Ibrahim et al., ICLR 2022)",
    "sfda": "self-challenging Fisher discriminant analysis (Shao et al., ECCV 2022)",
    "probe": "balanced accuracy of a standardized logistic regression on validation",
    "size": "the backbone's compute at that size (GFLOPs): the prior a learned score must beat",
}

#: The built-in demo datasets (`tlsearch demo-data --kind`).
KINDS = ("textures", "digits")
