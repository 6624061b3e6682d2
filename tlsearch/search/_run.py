"""The one entry point of `tlsearch search`/`resume`: the engine and process layout a
configuration asks for."""

from __future__ import annotations

from collections.abc import Callable

from tlsearch.search._config import SearchConfig, SearchError
from tlsearch.search._summary import SearchOutcome


def run(config: SearchConfig, *, workers: int = 1, isolate: bool = True,
        on_event: Callable[[str, dict], None] | None = None) -> SearchOutcome:
    """Run (or resume) the study of `config` to its `trials`: under KerasTuner's oracle
    in this process, or Optuna's loop in `workers` supervised processes (`isolate`) or
    in this one."""
    if config.engine == "keras-tuner":
        if workers > 1:
            raise SearchError("--engine keras-tuner runs one worker (KerasTuner's own "
                              "parallel mode needs its gRPC chief); use the optuna engine "
                              "for --workers")
        from tlsearch.search._tuner import run_keras_tuner

        return run_keras_tuner(config, oracle=config.kt_oracle, on_event=on_event)
    if isolate:
        from tlsearch.search._workers import run_workers

        return run_workers(config, workers, on_event=on_event)
    if workers > 1:
        raise SearchError("--workers > 1 needs worker processes; drop --no-isolate")
    from tlsearch.search import _optuna

    return _optuna.run_search(config, on_event=on_event)
