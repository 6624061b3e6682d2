"""The expected failures: errors whose message is the whole story for the user.

Each is raised with a message that names the file, key, flag or URL at fault and
what to do; the CLI prints it as one line with exit code 2, and a worker process
hands it to its parent unchanged. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["expected_errors", "one_line"]


def expected_errors() -> tuple[type[BaseException], ...]:
    """The project's error types that reach the user as one line (imported lazily:
    none of these modules imports TensorFlow)."""
    from tlsearch.backbones import UnknownBackboneError, WeightsError
    from tlsearch.data import DatasetError
    from tlsearch.demo import DemoDataError
    from tlsearch.export import ExportError
    from tlsearch.priors import PriorError
    from tlsearch.search import SearchError
    from tlsearch.space import SpaceError

    return (SearchError, SpaceError, DatasetError, WeightsError, UnknownBackboneError,
            ExportError, DemoDataError, PriorError)


def one_line(exc: BaseException) -> str:
    """The first line of an expected error's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
