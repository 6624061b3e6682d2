"""Terminal output for searches: live progress, the final summary and `status` tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tlsearch.strategy import ALL_BLOCKS

__all__ = ["SearchProgress", "render_status"]


class SearchProgress:
    """Rich progress for `run_search` events: trial n of N, phase/epoch, best so far."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.best: tuple[float, int, str] | None = None
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.current = ""
        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False, disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("", total=total)

    def __enter__(self) -> SearchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _describe(self) -> str:
        best = f"best {self.best[0]:.3f} (#{self.best[1]})" if self.best else "best -"
        return (f"{self.current} | {best} | pruned {self.counts['pruned']} "
                f"failed {self.counts['failed']}")

    def event(self, kind: str, info: dict[str, Any]) -> None:
        print_ = self.progress.console.print
        if kind == "notice":
            print_(f"[yellow]note:[/] {escape(info['message'])}")
        elif kind == "data":
            skipped = ", ".join(f"{n} {r}" for r, n in sorted(info["skipped_reasons"].items()))
            print_(f"Data: {info['images']} images in {info['classes']} classes "
                   f"(train {info['train']}, val {info['val']}"
                   + (f", test {info['test']}" if info["test"] else "") + ")"
                   + (f"; skipped {info['skipped']}: {skipped}" if info["skipped"] else ""))
        elif kind == "rank":
            print_(f"  probe {info['probe_balanced_accuracy']:.3f}  LogME {info['logme']:+.4f}"
                   f"  {escape(info['key'])}")
        elif kind == "trial_start":
            s = info["strategy"]
            self.current = f"#{info['number']} {s.backbone}@{s.image_size}"
            self.progress.update(self.task, completed=info["finished"],
                                 description=self._describe())
            retry = f" (retry of #{info['retry_of']})" if info.get("retry_of") is not None else ""
            who = f"worker {info['worker']}: " if "worker" in info else ""
            what = (f" (baseline {info['baseline']})" if info.get("baseline") else
                    f" (floor check of trial #{info['floor']})" if info.get("floor") is not None
                    else "")
            print_(f"[dim]{who}trial #{info['number']}{retry}{what}: {escape(s.describe())}[/]")
        elif kind == "epoch":
            self.current = f"#{info['trial']} step {info['step']} = {info['value']:.3f}"
            self.progress.update(self.task, description=self._describe())
        elif kind == "trial_end":
            state = info["state"]
            self.counts[state] += 1
            if state == "complete":
                value = info["value"]
                if self.best is None or value > self.best[0]:
                    self.best = (value, info["number"], "")
                print_(f"trial #{info['number']}: {value:.4f} in {info.get('seconds') or 0:.0f}s")
            elif state == "failed":
                print_(f"[red]trial #{info['number']} failed: {escape(str(info['reason']))}[/]")
            else:
                print_(f"trial #{info['number']}: pruned")
            self.progress.advance(self.task)
            self.progress.update(self.task, description=self._describe())

    def summary(self, outcome: Any, config: Any, holdout: dict[str, Any] | None = None) -> None:
        c = self.console
        counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items()))
        c.print(f"\nStudy [bold]{escape(config.study)}[/] in {escape(str(outcome.study_dir))}: "
                f"{counts}.")
        if outcome.stopped == "interrupted":
            c.print("[yellow]Interrupted.[/] The running trial was checkpointed; resume with "
                    f"[bold]tlsearch resume {escape(config.study)} --out {escape(config.out)}[/] "
                    "or by re-running the same command.")
        elif outcome.stopped == "timeout":
            c.print("Stopped at the time limit; re-run the same command to continue.")
        best = outcome.best
        if best is None:
            c.print("[red]No trial completed yet.[/]")
            return
        from tlsearch.strategy import Strategy

        strategy = Strategy.from_dict(best["strategy"])
        metrics = best.get("metrics", {})
        balanced = metrics.get("balanced_accuracy", best["value"])
        c.print(f"\n[bold green]Recommendation[/] (trial #{best['number']}, "
                f"validation balanced accuracy {balanced:.3f}"
                f", accuracy {metrics.get('accuracy', 0):.3f}):")
        c.print(f"  {escape(strategy.describe())}")
        c.print(f"  weights used: {escape(strategy.weights)}")
        chosen = outcome.selection or {}
        if chosen.get("best") not in (None, best["number"]):
            c.print(f"  chosen over trial #{chosen['best']} (validation "
                    f"{100 * chosen['margin']:.1f} points higher, within one standard error "
                    f"of {100 * (chosen['standard_error'] or 0):.1f}): it trains fewer "
                    "parameters (--select best to take the top trial)")
        from tlsearch.holdout import blend_of, score_of

        test = score_of(holdout, best["number"])
        blend = blend_of(holdout, best["number"])
        if test:
            alone = ""
            if blend:
                alone, test = f"; trial #{best['number']} alone {test['value']:.3f}", blend
                c.print(f"  recommended: trial #{best['number']} averaged with its floor, the "
                        f"linear probe #{blend['members'][1]} on the same backbone "
                        "(--no-blend-floor: the trial alone)")
            c.print(f"  [bold]held-out test {holdout['metric']}: {test['value']:.3f}[/] "
                    f"(95% interval {test['low']:.3f}-{test['high']:.3f}, "
                    f"{holdout['n_test']} images no selection saw){alone}")
            for number, row in sorted(holdout["scores"].items(), key=lambda kv: int(kv[0])):
                if row.get("baseline") and int(number) != best["number"]:
                    c.print(f"  baseline {escape(row['baseline'])} (trial #{number}) on test: "
                            f"{row['value']:.3f}")
                elif row.get("floor_of") is not None and int(number) != best["number"]:
                    c.print(f"  floor: linear probe on trial #{row['floor_of']}'s backbone "
                            f"(trial #{number}) on test: {row['value']:.3f}")
            pixels = holdout.get("pixels") or {}
            if pixels.get("test") is not None:
                c.print(f"  raw pixels ({pixels['size']} px, logistic regression) on test: "
                        f"{pixels['test']:.3f}" + ("  [yellow]<- as good as transfer[/]"
                                                   if pixels["test"] >= test["value"] else ""))
        else:
            c.print("  [yellow]no held-out test score[/]: the validation score above was "
                    "used to select, so it is optimistic")


def render_status(console: Console, summary: dict[str, Any], config: Any) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) or "no trials"
    console.print(f"Study [bold]{escape(summary['study'])}[/] ({escape(config.data_dir)}, "
                  f"space {escape(config.space)}, metric {summary['metric']}): {counts}")
    best, test = summary.get("best"), summary.get("test") or {}
    from tlsearch.holdout import blend_of, score_of

    scored = score_of(test, best["number"]) if best else None
    blend = blend_of(test, best["number"]) if best else None
    if best and scored and blend:
        console.print(f"Recommended: trial #{best['number']} averaged with its floor probe "
                      f"#{blend['members'][1]}, validation {blend['val_value']:.4f}, "
                      f"[bold]held-out test {blend['value']:.4f}[/] "
                      f"({blend['low']:.3f}-{blend['high']:.3f}, {test['n_test']} images; "
                      f"the trial alone {scored['value']:.4f})")
    elif best and scored:
        console.print(f"Recommended: trial #{best['number']}, validation {best['value']:.4f}, "
                      f"[bold]held-out test {scored['value']:.4f}[/] "
                      f"({scored['low']:.3f}-{scored['high']:.3f}, {test['n_test']} images)")
    elif best:
        console.print(f"Recommended: trial #{best['number']}, validation {best['value']:.4f} "
                      "(no held-out test score yet)")
    table = Table(title="Leaderboard", header_style="bold")
    for col in ("#", "objective", "backbone", "size", "unfreeze", "BN", "aug", "imbalance",
                "head LR", "weights", "time s", "latency ms"):
        table.add_column(col)
    for row in summary["leaderboard"]:
        s = row["strategy"] or {}
        unfreeze = s.get("unfreeze_blocks")
        table.add_row(str(row["number"]), f"{row['value']:.4f}", s.get("backbone", "?"),
                      str(s.get("image_size")), "all" if unfreeze == ALL_BLOCKS else str(unfreeze),
                      s.get("bn_mode", ""), s.get("augmentation", ""), s.get("imbalance", ""),
                      f"{s.get('head_lr', 0):.2g}", escape(str(s.get("weights", ""))[-40:]),
                      f"{row['seconds'] or 0:.0f}", f"{row['latency_ms'] or 0:.1f}")
    console.print(table)
    if summary["failures"]:
        failures = Table(title="Failures", header_style="bold")
        failures.add_column("#")
        failures.add_column("reason")
        failures.add_column("detail")
        for f in summary["failures"]:
            failures.add_row(str(f["number"]), escape(f["reason"]), escape(f["detail"][:100]))
        console.print(failures)
    from tlsearch.search import hide_password

    where = hide_password(config.storage) if config.storage else config.study_dir / "journal.log"
    console.print(f"The storage opens in optuna-dashboard too: optuna-dashboard "
                  f"{escape(str(where))}")
