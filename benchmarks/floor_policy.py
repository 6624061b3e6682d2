"""Which rule turns a search's top trial and its floor probe into the recommendation?

Run:  python -m benchmarks.floor_policy WORKDIR [WORKDIR ...]

Each WORKDIR is one `python -m benchmarks.transfer_demo --workdir WORKDIR ...` run (its
studies under WORKDIR/studies). For every study the script takes the top validation
trial and its floor partner (`tlsearch.recommend.floor_partner`: scikit-learn's exact
probe on the same backbone, size and weights), reads both kept models' recorded
validation probabilities, predicts the study's held-out test split with both saved
models (the same decoding as `tlsearch predict`), and scores each rule on test:

- `top`: the top trial alone;
- `blend`: the mean of the two members' probabilities (`--blend-floor`, session 8);
- `blend-T`: the mean after each member is scaled by its own validation temperature;
- `guard`: the blend when its validation lead over the probe is more than one paired
  bootstrap standard error (`tlsearch.recommend.paired_standard_error`), else the probe;
- `guard-top`: the same test, for the top trial alone;
- `bbc`: the blend when the bootstrap bias-corrected lead (BBC, Tsamardinos et al.,
  *Machine Learning* 2018) of "pick the top validation trial, average it with the probe"
  over the probe is positive, else the probe: on each resample of the validation images
  the in-bag top of all completed trials is picked and scored out of bag, so the lead is
  net of the optimism of picking the best of many on the same images;
- `bbc-T`: the same with temperature-scaled members (`blend-T`).

Every rule decides from validation only; the test split only scores what was decided.
The floor is the probe's test score; a rule "holds" in a run when its test score is at
least the floor's. For `blend-T` (the product's rule since session 10) each run also
says how far a miss is from noise: the test images it and the probe disagree on (won /
lost), the exact McNemar p-value of that split, and the paired bootstrap standard error
of the difference on test. Writes benchmarks/RESULTS-floor-policy.md (or `--results`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import tlsearch  # noqa: F401  (native defaults)
from benchmarks import write_results

RULES = ("top", "blend", "blend-T", "guard", "guard-top", "bbc", "bbc-T")
RESAMPLES = 1000


def _bbc_lead(labels, val, probe, metric, k, *, calibrated=None, seed=0):
    """Bootstrap bias-corrected lead (Tsamardinos et al., Machine Learning 2018) of
    "pick the top validation trial, average it with the probe" over the probe alone:
    on each resample of the validation images the in-bag top is picked and the blend's
    out-of-bag score is compared with the probe's on the same out-of-bag images."""
    from tlsearch.metrics import metric_value

    rng = np.random.default_rng(seed)
    numbers = sorted(val)
    preds = {n: val[n].argmax(1) for n in numbers}
    pick = calibrated or val
    blends = {n: ((pick[n] + pick[probe]) / 2).argmax(1) for n in numbers}
    n = len(labels)
    leads = []
    for _ in range(RESAMPLES):
        idx = rng.integers(0, n, n)
        oob = np.setdiff1d(np.arange(n), idx)
        if len(oob) == 0:
            continue
        top = max(numbers, key=lambda t: (metric_value(metric, labels[idx], preds[t][idx], k),
                                          -t))
        winner = preds[probe] if top == probe else blends[top]
        leads.append(metric_value(metric, labels[oob], winner[oob], k)
                     - metric_value(metric, labels[oob], preds[probe][oob], k))
    return float(np.mean(leads))


def _study_rows(study_dir: Path) -> dict | None:
    from tlsearch.calibration import calibrate, fit_temperature
    from tlsearch.data import Split
    from tlsearch.holdout import _predict, _val_probs
    from tlsearch.metrics import metric_value
    from tlsearch.recommend import floor_partner, paired_standard_error
    from tlsearch.search import MODEL_FILE, SPLIT_FILE, load_config, open_study, study_summary

    config = load_config(study_dir)
    handle = open_study(config, create=False)
    best = study_summary(handle, top=1)["best"]
    if best is None:
        return None
    top = best["number"]
    probe = floor_partner(handle, top)
    split = Split.load(handle.dir / SPLIT_FILE)
    metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"
    k = len(split.classes)
    y_val = split.labels("val")
    y_test = np.asarray([y for _, y in split.test])
    paths = [Path(config.data_dir) / p for p, _ in split.test]
    trials = {t.number: t for t in handle.study.get_trials(deepcopy=False)}

    def score(labels, probs):
        return metric_value(metric, labels, np.asarray(probs).argmax(1), k)

    def test_probs(number):
        size = int(trials[number].user_attrs["strategy"]["image_size"])
        return _predict(handle.trial_dir(number) / MODEL_FILE, paths, size)

    row = {"study": f"{study_dir.parent.parent.name}/{study_dir.name}", "top_trial": top,
           "probe_trial": probe, "n_val": len(y_val), "n_test": len(y_test)}
    val_top, test_top = _val_probs(handle.trial_dir(top)), test_probs(top)
    if probe is None:  # the top trial is the exact probe: every rule recommends it
        value = score(y_test, test_top)
        row.update(floor=value, **{r: value for r in RULES}, decided={},
                   noise={"won": 0, "lost": 0, "p": 1.0, "se": 0.0})
        return row
    val_probe, test_probe = _val_probs(handle.trial_dir(probe)), test_probs(probe)
    t_top, t_probe = fit_temperature(val_top, y_val), fit_temperature(val_probe, y_val)
    val_blend = (val_top + val_probe) / 2
    val_blend_t = (calibrate(val_top, t_top) + calibrate(val_probe, t_probe)) / 2
    test_blend = (test_top + test_probe) / 2
    test_blend_t = (calibrate(test_top, t_top) + calibrate(test_probe, t_probe)) / 2
    lead_blend = score(y_val, val_blend) - score(y_val, val_probe)
    se_blend = paired_standard_error(y_val, val_blend, val_probe, metric)
    lead_top = score(y_val, val_top) - score(y_val, val_probe)
    se_top = paired_standard_error(y_val, val_top, val_probe, metric)
    val_all = {}
    for t in trials.values():
        if t.state.name == "COMPLETE" and t.value is not None:
            v = _val_probs(handle.trial_dir(t.number))
            if v is not None and v.shape == val_probe.shape:
                val_all[t.number] = v
    cal_all = {n: calibrate(v, fit_temperature(v, y_val)) for n, v in val_all.items()}
    bbc = _bbc_lead(y_val, val_all, probe, metric, k)
    bbc_t = _bbc_lead(y_val, val_all, probe, metric, k, calibrated=cal_all)
    guard = lead_blend > se_blend and lead_blend > 0
    guard_top = lead_top > se_top and lead_top > 0
    row.update(
        floor=score(y_test, test_probe), top_val=score(y_val, val_top),
        probe_val=score(y_val, val_probe), blend_val=score(y_val, val_blend),
        blend_t_val=score(y_val, val_blend_t),
        **{"top": score(y_test, test_top), "blend": score(y_test, test_blend),
           "blend-T": score(y_test, test_blend_t),
           "guard": score(y_test, test_blend if guard else test_probe),
           "guard-top": score(y_test, test_top if guard_top else test_probe),
           "bbc": score(y_test, test_blend if bbc > 0 else test_probe),
           "bbc-T": score(y_test, test_blend_t if bbc_t > 0 else test_probe)},
        noise=_noise(y_test, test_blend_t, test_probe, metric),
        decided={"lead_blend": lead_blend, "se_blend": se_blend, "lead_top": lead_top,
                 "se_top": se_top, "T": [t_top, t_probe], "bbc": bbc, "bbc_T": bbc_t,
                 "trials": len(val_all)})
    return row


def _noise(labels: np.ndarray, probs: np.ndarray, floor: np.ndarray, metric: str) -> dict:
    """How a rule's test result differs from the floor's, image by image: the images
    only it gets right (won) or only the floor gets right (lost), the exact McNemar
    p-value of that split, and the paired bootstrap SE of the metric's difference."""
    from scipy.stats import binomtest

    from tlsearch.recommend import paired_standard_error

    right, base = probs.argmax(1) == labels, floor.argmax(1) == labels
    won, lost = int((right & ~base).sum()), int((~right & base).sum())
    p = binomtest(min(won, lost), won + lost, 0.5).pvalue if won + lost else 1.0
    return {"won": won, "lost": lost, "p": float(p),
            "se": paired_standard_error(labels, probs, floor, metric)}


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--results", default="RESULTS-floor-policy.md",
                        help="results file name under benchmarks/")
    args = parser.parse_args()
    rows = []
    for workdir in args.workdirs:
        for study_dir in sorted((workdir / "studies").iterdir()):
            row = _study_rows(study_dir)
            if row is not None:
                rows.append(row)
                print(json.dumps(row), flush=True)
    command = " ".join(["python -m benchmarks.floor_policy", *map(str, args.workdirs),
                        *(["--results", args.results]
                          if args.results != "RESULTS-floor-policy.md" else [])])
    lines = ["# Recommendation rules over the transfer benchmark's studies: results", "",
             f"Command: `{command}`", "",
             "Balanced accuracy on each study's held-out test split; the floor is the exact "
             "probe on the top trial's backbone and size. Points against the floor in "
             "brackets.", "",
             "| study | top / probe | val: top, probe, blend | floor | "
             + " | ".join(RULES) + " |",
             "|---" * (4 + len(RULES)) + "|"]
    for r in rows:
        cells = [f"{_fmt(r[x])} ({100 * (r[x] - r['floor']):+.1f})" for x in RULES]
        vals = (f"{_fmt(r['top_val'])}, {_fmt(r['probe_val'])}, {_fmt(r['blend_val'])}"
                if r["probe_trial"] is not None else "top is the probe")
        lines.append(f"| {r['study']} | #{r['top_trial']} / "
                     f"{'#' + str(r['probe_trial']) if r['probe_trial'] is not None else '—'}"
                     f" | {vals} | "
                     f"{_fmt(r['floor'])} | " + " | ".join(cells) + " |")
    lines.append("| **held (test ≥ floor)** | | | | " + " | ".join(
        f"{sum(r[x] >= r['floor'] - 1e-12 for r in rows)} of {len(rows)}" for x in RULES)
        + " |")
    lines.append("| **mean points vs floor** | | | | " + " | ".join(
        f"{100 * np.mean([r[x] - r['floor'] for r in rows]):+.2f}" for x in RULES) + " |")
    lines += ["", "`blend-T` (the product's rule) against the floor on test, image by image: "
              "test images only it gets right / only the probe gets right, the exact McNemar "
              "p-value, the difference in points and its paired bootstrap standard error:", "",
              "| study | won / lost | McNemar p | points vs floor | paired SE (points) |",
              "|---|---|---|---|---|"]
    for r in rows:
        z = r["noise"]
        lines.append(f"| {r['study']} | {z['won']} / {z['lost']} | {z['p']:.2f} | "
                     f"{100 * (r['blend-T'] - r['floor']):+.1f} | {100 * z['se']:.1f} |")
    within = sum(r["blend-T"] - r["floor"] >= -r["noise"]["se"] - 1e-12 for r in rows)
    significant = sum(r["blend-T"] < r["floor"] - 1e-12 and r["noise"]["p"] < 0.05
                      for r in rows)
    lines += ["", f"blend-T is at least the floor minus one paired SE in {within} of "
              f"{len(rows)} runs; below it with McNemar p < 0.05 in {significant}.", ""]
    lines += ["", "Raw records:", "", "```", *(json.dumps(r) for r in rows), "```"]
    print(f"wrote {write_results(args.results, lines)}")


if __name__ == "__main__":
    main()
