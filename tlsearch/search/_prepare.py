"""Before the first trial: the saved split, weights per backbone, the backbone ranking,
and the baseline, prior and floor trials enqueued ahead of the sampler's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsearch import kept
from tlsearch.search._config import (
    SPLIT_FILE,
    SearchConfig,
    SearchError,
    default_cache_dir,
    meets_constraints,
)
from tlsearch.search._storage import StudyHandle, _admission, _space_high, open_study


def _resolve_weights(handle: StudyHandle, weights: str,
                     notify: Callable[[str], None]) -> dict[str, str]:
    """Weights per backbone in the space; `auto` may drop backbones (with a notice)."""
    from tlsearch.backbones import get_spec, resolve_auto_weights

    chosen: dict[str, str] = {}
    for name, sizes in handle.space.backbones:
        if weights != "auto":
            chosen[name] = weights
            continue
        resolved = resolve_auto_weights(get_spec(name), sizes[0])
        if resolved is None:
            notify(f"{name}: no ImageNet weights offline and no bundled weights; left out")
        else:
            chosen[name] = resolved
            notify(f"{name}: using {'ImageNet' if resolved == 'imagenet' else 'bundled'} "
                   f"weights ({resolved})")
    if weights == "auto" and not chosen:
        # Nothing pretrained is reachable: run on random weights rather than not at all,
        # and say loudly that the recommendation will mean little.
        notify("no pretrained weights are available for any backbone in the space: falling "
               "back to random initialisation (--weights none); expect near-chance scores")
        chosen = {name: "none" for name, _ in handle.space.backbones}
    return chosen

AUTO_TEST_FRACTION = 0.2

MIN_CLASS_FOR_TEST = 20

def held_out_fraction(config: SearchConfig, index: Any) -> float:
    if config.test_fraction is not None:
        return config.test_fraction
    counts: dict[int, int] = {}
    for record in index.records:
        counts[record.label] = counts.get(record.label, 0) + 1
    big_enough = counts and min(counts.values()) >= MIN_CLASS_FOR_TEST
    return AUTO_TEST_FRACTION if big_enough else 0.0

def prepare_split(handle: StudyHandle) -> tuple[Any, Any]:
    """Scan the data and load the study's split, making it on first use.

    The split is saved in the study folder, so every resume trains on the same images.
    Its digest is also kept in the storage: a worker on another machine (with its own
    study folder) recomputes the split and refuses to join if it came out different.
    """
    from tlsearch.data import Split, scan

    config = handle.config
    index = scan(Path(config.data_dir), progress=False)
    split_path = handle.dir / SPLIT_FILE

    def fresh() -> Any:
        made = study_split(index, val_fraction=config.val_fraction,
                           test_fraction=held_out_fraction(config, index), seed=config.seed)
        made.save(split_path)
        return made

    if split_path.exists():
        split = Split.load(split_path)
        if split.fingerprint != index.fingerprint:
            if not config.force:
                raise SearchError(
                    f"the dataset in {config.data_dir} changed since study {config.study!r} "
                    "started (fingerprint differs); use a new --study or pass --force")
            split = fresh()
    else:
        split = fresh()
    digest = _split_digest(split)
    saved = handle.study.user_attrs.get("split_digest")
    if saved is None or (config.force and saved != digest):
        handle.study.set_user_attr("split_digest", digest)
    elif saved != digest:
        raise SearchError(
            f"study {config.study!r} was started on a different split of the data (another "
            "machine's copy differs, or other --val-fraction/--seed); use the same dataset "
            "copy and options on every machine")
    return index, split

def study_split(index: Any, *, val_fraction: float, test_fraction: float, seed: int) -> Any:
    """The split a study makes of `index`: exact and near duplicates stay on one side,
    so no copy of a test image trains."""
    from tlsearch.data import DatasetError, make_split
    from tlsearch.duplicates import find_duplicates

    try:
        return make_split(index, val_fraction=val_fraction, test_fraction=test_fraction,
                          seed=seed, groups=find_duplicates(index).groups())
    except DatasetError as exc:
        raise SearchError(str(exc)) from None


def rank_data(data_dir: Path, *, space: str, weights: str, seed: int, val_fraction: float,
              cache_dir: Path | None, ranker: str = "probe",
              notify: Callable[[str], None] = lambda message: None) -> list[Any]:
    """`tlsearch rank`: every ranker's scores for the space's backbone/size pairs, on the
    training part of the split a search with these options makes (its test part is
    never looked at), without a study."""
    from tlsearch.backbones import get_spec, iter_names, resolve_auto_weights
    from tlsearch.data import scan
    from tlsearch.features import FeatureCache
    from tlsearch.rank import rank_backbones
    from tlsearch.space import load_space
    from tlsearch.trial_data import TrialData

    loaded = load_space(space, known_backbones=set(iter_names(include_test=True)))
    index = scan(Path(data_dir), progress=False)
    config = SearchConfig(str(data_dir), test_fraction=None)
    split = study_split(index, val_fraction=val_fraction, seed=seed,
                        test_fraction=held_out_fraction(config, index))
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    pairs = []
    for name, size in loaded.backbone_sizes():
        chosen = resolve_auto_weights(get_spec(name), size) if weights == "auto" else weights
        if chosen is None:
            notify(f"{name}: no weights available offline; left out")
            continue
        pairs.append((name, size, chosen))
    if not pairs:
        raise SearchError("no backbone in the space has usable weights")
    data = TrialData.from_split(Path(data_dir), split, cache)
    return rank_backbones(pairs, data, FeatureCache(cache), seed=seed, ranker=ranker,
                          every=True)


def _split_digest(split: Any) -> str:
    import hashlib

    payload = json.dumps([split.fingerprint, split.classes, split.train, split.val, split.test])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

def _initialise(handle: StudyHandle, space: Any, weights: dict[str, str], data: Any,
                cache: Any, emit: Callable[[str, dict], None]) -> None:
    """Once per study, before its first trial: rank the backbones, keep the top ones if
    asked, and enqueue the baseline recipes on the best-ranked backbone."""
    from tlsearch.baselines import BASELINES, baseline_strategies
    from tlsearch.rank import rank_backbones

    config, study = handle.config, handle.study
    if study.get_trials(deepcopy=False):  # a study from before this step existed
        study.set_user_attr("initialised", True)
        return
    pairs = [(name, size, weights[name]) for name, size in space.backbone_sizes()]
    ranking = []
    if config.keep_top_backbones or (config.rank and len(pairs) > 1):
        emit("notice", {"message": f"ranking {len(pairs)} backbone/size pair(s) by "
                                   f"{config.ranker} on frozen features (also fills the "
                                   "prefix cache)"})
        rows = rank_backbones(pairs, data, cache, seed=config.seed, ranker=config.ranker,
                              on_row=lambda row: emit("rank", row.to_dict()))
        ranking = [row.to_dict() for row in rows]
        study.set_user_attr("ranking", ranking)
        study.set_user_attr("ranker", config.ranker)
    if config.keep_top_backbones:
        searched = [row["key"] for row in ranking[:config.keep_top_backbones]]
        study.set_user_attr("kept_backbones", searched)
        emit("notice", {"message": f"searching only the top {len(searched)} by {config.ranker}: "
                                   f"{', '.join(searched)}"})
    if config.baselines and config.trials < 2 * len(BASELINES):
        emit("notice", {"message": f"baseline recipes skipped: {config.trials} trials leave no "
                                   f"room for the {len(BASELINES)} recipes and a search "
                                   f"(needs --trials {2 * len(BASELINES)} or more)"})
    elif config.baselines:
        top = ranking[0]["key"] if ranking else "{}@{}".format(*space.backbone_sizes()[0])
        name = top.split("@")[0]
        base = space.fixed_strategy(backbone=top, weights="none", seed=config.seed)
        # The recipes get the space's full epoch budget (its first choice of unfreeze
        # depth may be 0, which leaves a fixed strategy no fine-tuning epochs).
        base = base.replace(weights=weights[name],
                            head_epochs=_space_high(space, "head_epochs", base.head_epochs),
                            finetune_epochs=_space_high(space, "finetune_epochs", 3))
        for baseline, strategy in baseline_strategies(base):
            study.enqueue_trial({}, user_attrs={"baseline": baseline.name,
                                                "strategy": strategy.to_dict()})
        emit("notice", {"message": f"baseline recipes enqueued first, on {top}: "
                                   + ", ".join(b.name for b, _ in baseline_strategies(base))})
    if config.priors:
        _enqueue_priors(handle, space, emit)
    study.set_user_attr("initialised", True)

def _enqueue_priors(handle: StudyHandle, space: Any, emit: Callable[[str, dict], None]) -> None:
    """Enqueue the best strategies of earlier studies, mapped onto this space, after the
    baselines: ordinary trials from there on (sampled, pruned, seen by the sampler)."""
    from tlsearch.priors import load_priors, map_onto

    priors = load_priors([Path(p) for p in handle.config.priors])
    seen: set[str] = set()
    used, dropped = [], 0
    for prior in priors:
        params = map_onto(space, prior)
        key = json.dumps(params, sort_keys=True, default=str)
        if params is None or key in seen:
            dropped += params is None
            continue
        seen.add(key)
        handle.study.enqueue_trial(params, user_attrs={"prior": {
            "source": prior.source, "trial": prior.trial, "value": prior.value}})
        used.append({"source": prior.source, "trial": prior.trial, "value": prior.value,
                     "params": params})
    handle.study.set_user_attr("priors", used)
    emit("notice", {"message": f"{len(used)} strategy(ies) from {len(handle.config.priors)} "
                               "earlier stud(ies) enqueued after the baselines"
                               + (f"; {dropped} left out (backbone not in this space)"
                                  if dropped else "")})

def _enqueue_floor(handle: StudyHandle, emit: Callable[[str, dict], None]) -> None:
    """Give the budget's last trial to the linear probe on the best trial's own backbone
    and size, when the best is not that probe and nothing has measured it yet.

    The report then measures the recommendation against the probe on its own backbone on
    the test split, the probe competes for the recommendation, and under `--select 1se`
    it is preferred when fine-tuning does not beat it by more than chance.
    """
    from optuna.trial import TrialState

    from tlsearch.baselines import BASELINES, floor_of
    from tlsearch.strategy import Strategy

    config, study = handle.config, handle.study
    if not config.baselines or config.trials < 2 * len(BASELINES):
        return
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return  # queued retries come first; they take the slot
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                       and t.user_attrs.get("strategy")
                       and meets_constraints(config, t.user_attrs.get("latency_ms"),
                                             t.user_attrs.get("params_total"))),
                      key=lambda t: (-t.value, t.number))
    if not complete:
        return
    best = complete[0]
    strategy = Strategy.from_dict(best.user_attrs["strategy"])
    if strategy.head_init == "probe":
        return  # scikit-learn's probe itself
    # A head-only solve is checked too: its C, class weights, augmentation and SGD epochs
    # were chosen on validation images, and lost to the plain probe on test in benchmark
    # runs (benchmarks/RESULTS-transfer-*self-pretrained.md).
    for t in trials:
        s = t.user_attrs.get("strategy")
        # A finished probe counts only while its model is kept (to compete and be scored
        # on test); a running one is another worker's, and will be.
        has_model = t.state == TrialState.RUNNING or (
            t.state == TrialState.COMPLETE and kept.exists(handle.trial_dir(t.number)))
        # Only scikit-learn's exact probe counts: a sampled head-only trial chose its C
        # on validation and may have trained SGD epochs after the solve.
        if (s and has_model and s["backbone"] == strategy.backbone
                and int(s["image_size"]) == strategy.image_size
                and s.get("weights") == strategy.weights
                and s.get("head_init") == "probe"):
            return  # measured already
    floor = floor_of(strategy)
    study.enqueue_trial({}, user_attrs={"floor": best.number, "strategy": floor.to_dict()})
    emit("notice", {"message": f"last trial: the linear probe on {strategy.backbone}@"
                               f"{strategy.image_size}, the floor trial {best.number} "
                               "has to beat"})

@dataclass
class Prepared:
    """A study ready for trials: its data, cache, weights per backbone and the space
    left after weights, ranking and `--keep-top-backbones`."""

    handle: StudyHandle
    space: Any
    weights: dict[str, str]
    data: Any
    cache: Any
    metric: str

def prepare_search(config: SearchConfig, emit: Callable[[str, dict], None]) -> Prepared:
    """Open the study, load its split and data, resolve weights, and (once per study)
    rank the backbones and enqueue the baselines. Shared by both search engines."""
    import optuna

    from tlsearch.features import FeatureCache
    from tlsearch.trial_data import TrialData

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handle = open_study(config)
    study = handle.study
    metric = study.user_attrs.get("metric") or handle.space.objective

    index, split = prepare_split(handle)
    emit("data", {"images": len(index.records), "skipped": len(index.skipped),
                  "classes": len(split.classes), "train": len(split.train),
                  "val": len(split.val), "test": len(split.test),
                  "skipped_reasons": _reason_counts(index.skipped)})
    if not split.test:
        emit("notice", {"message": "no held-out test split (a class has fewer than "
                        f"{MIN_CLASS_FOR_TEST} images, or --test-fraction 0): the headline is "
                        "the validation score, which the search selects on, so it is "
                        "optimistic"})
    data = TrialData.from_split(Path(config.data_dir), split, config.cache_path)
    cache = FeatureCache(config.cache_path, max_bytes=None if config.cache_max_gb is None
                         else int(config.cache_max_gb * 2**30))

    weights = _resolve_weights(handle, config.weights, lambda m: emit("notice", {"message": m}))
    if not weights:
        raise SearchError("no backbone in the space has usable weights (see the notices above)")
    space = handle.space.restrict_backbones(list(weights)) if len(weights) < len(
        handle.space.backbones) else handle.space

    with _admission(handle):  # one worker ranks and enqueues; the others wait for it
        if not study.user_attrs.get("initialised"):
            _initialise(handle, space, weights, data, cache, emit)
    searched = study.user_attrs.get("kept_backbones")
    if searched:
        space = space.restrict_backbones(searched)
    return Prepared(handle=handle, space=space, weights=weights, data=data, cache=cache,
                    metric=metric)

def _reason_counts(skipped: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in skipped:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return counts
