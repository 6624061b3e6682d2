"""`--engine keras-tuner`: KerasTuner's oracles driving the same trial engine.

The YAML space is compiled to KerasTuner hyperparameters define-by-run: the space's own
sampling code asks a small adapter for each value, and the adapter registers it as a
`hp.Choice`/`hp.Int`/`hp.Float` (conditional parameters are registered only when
active, as with Optuna). KerasTuner's Hyperband (or Bayesian optimisation) oracle picks
the values and the epoch budgets; our engine trains (frozen-prefix cache included) and
reports back through the reporter protocol. A Hyperband trial promoted to a bigger
budget continues from the checkpoint of the trial it extends.

The oracle's project lives in the study folder (`keras_tuner/`), so re-running the
command resumes it. Every finished KerasTuner trial is also written to the study's Optuna
storage, with the same attributes as an Optuna-engine trial, so `status`, `report` and
`export` read it unchanged. KerasTuner is imported only here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from typing import Any

from tlsearch.atomic import write_json
from tlsearch.options import ORACLES
from tlsearch.search._config import SearchConfig, SearchError
from tlsearch.search._optuna import run_search
from tlsearch.search._prepare import prepare_search
from tlsearch.search._recorder import TrialRecorder, disk_error, disk_failure, optuna_state
from tlsearch.search._storage import _finished_count, _max_steps
from tlsearch.search._summary import SearchOutcome, study_summary

#: What stops trials early under each oracle, in `--pruner` terms: Hyperband brackets
#: are the oracle's own; Bayesian optimisation trains every trial to its end.
ORACLE_PRUNER = {"hyperband": "hyperband", "bayesian": "none"}
PROJECT = "keras_tuner"
OBJECTIVE = "objective"


class _HpTrial:
    """What `SearchSpace.sample` needs of a trial, answered by KerasTuner's `hp`."""

    def __init__(self, hp: Any, number: int) -> None:
        self.hp, self.number = hp, number
        self.suggested: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self.hp.Choice(name, list(choices))
        self.suggested[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        value = int(self.hp.Int(name, low, high, step=None if log else step,
                                sampling="log" if log else "linear"))
        self.suggested[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        value = float(self.hp.Float(name, low, high, step=step,
                                    sampling="log" if log else "linear"))
        self.suggested[name] = value
        return value


def register_space(hp: Any, space: Any) -> None:
    """Declare every searched parameter up front (conditional ones included): an oracle
    samples only what its hyperparameters hold when it proposes a trial."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    for name, dist in space.distributions().items():
        if isinstance(dist, CategoricalDistribution):
            hp.Choice(name, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            hp.Int(name, dist.low, dist.high, step=None if dist.log else dist.step,
                   sampling="log" if dist.log else "linear")
        else:
            hp.Float(name, dist.low, dist.high, step=dist.step,
                     sampling="log" if dist.log else "linear")


class _BudgetReporter:
    """Reports each epoch; stops the trial when KerasTuner's epoch budget is spent."""

    def __init__(self, budget: int | None, on_epoch: Callable[[int, float], None]) -> None:
        self.budget, self.on_epoch = budget, on_epoch
        self.values: dict[int, float] = {}

    def report(self, value: float, step: int) -> None:
        self.values[step] = value
        self.on_epoch(step, value)

    def should_stop(self) -> bool:
        return self.budget is not None and bool(self.values) and max(self.values) >= self.budget


def _oracle(kind: str, config: Any, max_epochs: int) -> Any:
    import keras_tuner as kt

    objective = kt.Objective(OBJECTIVE, direction="max")
    if kind == "hyperband":
        return kt.oracles.HyperbandOracle(objective=objective, max_epochs=max(max_epochs, 2),
                                          factor=3, hyperband_iterations=1, seed=config.seed,
                                          max_consecutive_failed_trials=5)
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(objective=objective,
                                                     max_trials=config.trials,
                                                     seed=config.seed,
                                                     max_consecutive_failed_trials=5)
    raise ValueError(f"unknown KerasTuner oracle {kind!r}; choose one of {', '.join(ORACLES)}")


def run_keras_tuner(config: SearchConfig, *, oracle: str = "hyperband",
                    on_event: Callable[[str, dict], None] | None = None) -> SearchOutcome:
    """Run (or resume) a KerasTuner-driven search; returns a `SearchOutcome`.

    `config.timeout` is honoured as by the Optuna engine: no trial starts after it.
    `config.pruner` must be what the oracle does (`ORACLE_PRUNER`).
    """
    import time

    import keras_tuner as kt
    import optuna
    from optuna.trial import TrialState

    from tlsearch.strategy import Strategy
    from tlsearch.train import TrialPruned, run_trial

    if config.pruner != ORACLE_PRUNER[oracle]:
        raise SearchError(
            f"--pruner {config.pruner} cannot drive --engine keras-tuner: the {oracle} oracle "
            f"decides early stopping itself (--pruner {ORACLE_PRUNER[oracle]}, the default "
            "there); use --engine optuna for other pruners")
    started = time.monotonic()
    emit = on_event or (lambda kind, info: None)
    prepared = prepare_search(config, emit)
    recorder = TrialRecorder(prepared.handle, emit)
    handle, space = prepared.handle, prepared.space
    study = handle.study
    metric = prepared.metric
    study.set_user_attr("engine", "keras-tuner")

    # The baseline recipes (if enqueued) run first, through the ordinary loop.
    waiting = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
               if t.user_attrs.get("baseline")]
    if waiting:
        run_search(dataclasses.replace(
            config, trials=min(config.trials, _finished_count(study) + len(waiting))),
            on_event=on_event)

    mirrored = {t.user_attrs.get("kt_trial_id") for t in study.get_trials(deepcopy=False)}
    distributions = space.distributions()
    project = handle.dir / PROJECT
    outer = {"stopped": "done"}

    class _Tuner(kt.engine.base_tuner.BaseTuner):
        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            hp = trial.hyperparameters
            run_dir = project / "runs" / trial.trial_id
            run_dir.mkdir(parents=True, exist_ok=True)
            budget = hp.values.get("tuner/epochs")
            parent = hp.values.get("tuner/trial_id")
            adapter = _HpTrial(hp, number=int(trial.trial_id))
            strategy = space.sample(adapter, weights="none", seed=config.seed)
            strategy = strategy.replace(weights=prepared.weights[strategy.backbone])
            if parent is not None:
                # Hyperband promotes a trial: same strategy, continued from its checkpoint.
                parent_dir = project / "runs" / parent
                saved = json.loads((parent_dir / "strategy.json").read_text())
                strategy = Strategy.from_dict(saved)
                if (parent_dir / "checkpoint").exists() and not (run_dir / "checkpoint").exists():
                    shutil.copytree(parent_dir / "checkpoint", run_dir / "checkpoint")
            write_json(run_dir / "strategy.json", strategy.to_dict())
            number_hint = trial.trial_id
            emit("trial_start", {"number": f"kt-{number_hint}", "strategy": strategy,
                                 "finished": _finished_count(study), "total": config.trials,
                                 "retry_of": None})
            reporter = _BudgetReporter(budget, lambda step, value: emit(
                "epoch", {"trial": f"kt-{number_hint}", "step": step, "value": value}))
            state, result = "complete", None
            try:
                result = run_trial(strategy, prepared.data, reporter,
                                   checkpoint_dir=run_dir / "checkpoint",
                                   resume_from=run_dir / "checkpoint", metric=metric,
                                   feature_cache=prepared.cache, reuse_backbone=True)
            except TrialPruned:
                state = "pruned"
            except OSError as exc:
                if disk_failure(exc) is None:
                    raise
                # Not a bad trial but a full or read-only disk: stop the whole search.
                raise kt.errors.FatalError(str(disk_error(exc))) from None
            if result is not None and result.state == "failed":
                state = "failed"
            value = (result.objective if state == "complete" else
                     max(reporter.values.values(), default=0.0))
            self._mirror(trial.trial_id, strategy, adapter.suggested, state, value,
                         reporter.values, result, budget)
            if state == "failed":
                raise kt.errors.FailedTrialError(result.failure_reason)
            return {OBJECTIVE: float(value)}

        def _mirror(self, kt_id: str, strategy: Any, suggested: dict[str, Any], state: str,
                    value: float, values: dict[int, float], result: Any,
                    budget: int | None) -> None:
            if kt_id in mirrored:
                return
            params = {k: v for k, v in suggested.items() if k in distributions}
            attrs = {"strategy": strategy.to_dict(), "kt_trial_id": kt_id,
                     "engine": "keras-tuner", "kt_budget": budget}
            if result is not None:
                # A finished trial's attributes cannot change: all of them go in at once.
                attrs.update(recorder.attributes(result))
            frozen = optuna.trial.create_trial(
                state=optuna_state(state),
                value=float(value) if state == "complete" else None,
                params=params, distributions={k: distributions[k] for k in params},
                user_attrs=attrs, intermediate_values=dict(values))
            study.add_trial(frozen)
            number = study.get_trials(deepcopy=False)[-1].number
            mirrored.add(kt_id)
            recorder.write(number, strategy, result=result)
            if state == "complete":
                recorder.keep_if_top(number, result)
            recorder.ended(number, state, result, value=value)

        def save_model(self, trial_id: str, model: Any, step: int = 0) -> None:
            pass  # models are kept by the mirror (top trials), as in the Optuna engine

        def load_model(self, trial: Any) -> None:
            return None

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            out_of_time = (config.timeout is not None
                           and time.monotonic() - started > config.timeout)
            if out_of_time:
                outer["stopped"] = "timeout"
            if out_of_time or _finished_count(study) >= config.trials:
                self.oracle.max_trials = len(self.oracle.trials)  # stop asking for more

    oracle_obj = _oracle(oracle, config, _max_steps(space))
    remaining = config.trials - _finished_count(study)
    tuner = _Tuner(oracle=oracle_obj, directory=str(handle.dir), project_name=PROJECT,
                   overwrite=False)
    register_space(tuner.oracle.hyperparameters, space)
    # Resumed or not, the budget is this run's total: stop once the study has it.
    tuner.oracle.max_trials = len(tuner.oracle.trials) + max(remaining, 0)
    if remaining > 0:
        try:
            tuner.search(verbose=0)  # our progress display speaks for it
        except KeyboardInterrupt:
            outer["stopped"] = "interrupted"
        except kt.errors.FatalError as exc:
            raise SearchError(str(exc)) from None
        except RuntimeError as exc:  # KerasTuner's "too many consecutive failures"
            if "consecutive failures" not in str(exc):
                raise
            outer["stopped"] = "all_failed"
    summary = study_summary(handle)
    return SearchOutcome(best=summary["best"], counts=summary["counts"],
                         stopped=outer["stopped"], study_dir=handle.dir,
                         selection=summary["selection"])

