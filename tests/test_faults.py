"""Injected faults reach the code that honours them, and leave nothing behind."""

from __future__ import annotations

import os

from tlsearch import faults


def test_outside_a_test_nothing_is_injected():
    assert faults.active() == faults.Faults()
    assert faults.active().nan_step(3) is None
    assert faults.active().crash_signal(0, {}) is None


def test_injected_faults_are_seen_by_trial_number_and_removed_after():
    with faults.inject(nan_at_step=4, nan_trials={2}, crash_trials={1: "SIGSEGV:always",
                                                                  5: "SIGABRT"}):
        seen = faults.active()
        assert seen.nan_step(2) == 1 and seen.nan_step(0) == 4
        assert seen.crash_signal(1, {}) == "SIGSEGV:always"
        # A crash retry of trial 1 crashes too (":always"); one of trial 5 does not.
        assert seen.crash_signal(7, {"crash_retry_of": 1}) == "SIGSEGV:always"
        assert seen.crash_signal(8, {"crash_retry_of": 5}) is None
        assert seen.crash_signal(9, {}) is None
    assert faults.active() == faults.Faults()
    assert not any(key.startswith("_TLSEARCH_TEST") for key in os.environ)
