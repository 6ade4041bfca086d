"""What decides keeps its error rate: a seeded null simulation of the verdict and FDR rules, and
the study report built on the two-sided p-values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrprobe.errors import DataFormatError
from cxrprobe.stats.auroc import auroc
from cxrprobe.stats.bootstrap import AurocStatistic, make_resampler, run_bootstrap
from cxrprobe.stats.intervals import paired_p_values
from cxrprobe.stats.multiple import benjamini_hochberg
from cxrprobe.stats.outputs import run_compare
from cxrprobe.stats.predictions import Predictions, write_predictions
from cxrprobe.stats.report import BootstrapOptions
from cxrprobe.workflow.report import collect_study

ALPHA = 0.05


def _null_rates(datasets: int, labels: int, n: int, resamples: int, seed: int) -> dict:
    """Rejection rates of the decision rules when A and B are exchangeable.

    Every (dataset, label) is one column of a wide table, so one bootstrap run covers all the
    datasets (they share resample counts, but their data are independent).
    """
    rng = np.random.default_rng(seed)
    cols = datasets * labels
    targets = (rng.random((n, cols)) < 0.3).astype(float)
    shared = targets + rng.normal(size=(n, cols))  # both models see the same signal ...
    a = shared + rng.normal(size=(n, cols))  # ... plus their own, equally large noise
    b = shared + rng.normal(size=(n, cols))
    boot = run_bootstrap(
        make_resampler(n, resamples, seed=seed + 1),
        {"a": AurocStatistic(targets, a), "b": AurocStatistic(targets, b)},
        device="cpu",
    )
    deltas = boot["b"] - boot["a"]  # (B, D * L); every label is defined in every resample here
    observed = auroc(targets, b) - auroc(targets, a)
    label_p = paired_p_values(deltas, observed)
    by_dataset = deltas.reshape(resamples, datasets, labels).mean(axis=2)
    mean_p = paired_p_values(by_dataset, observed.reshape(datasets, labels).mean(axis=1))
    out = {}
    for rule in ("two_sided", "study_one_sided"):
        p = getattr(label_p, rule).reshape(datasets, labels)
        adjusted = np.stack([benjamini_hochberg(row) for row in p])
        out[rule] = {
            "label": float(np.mean(p <= ALPHA)),
            "any_label_after_fdr": float(np.mean((adjusted <= ALPHA).any(axis=1))),
            "verdict": float(np.mean(getattr(mean_p, rule) <= ALPHA)),
        }
    return out


def test_null_simulation_keeps_alpha_and_the_one_sided_rule_does_not():
    datasets, labels = 400, 5
    rates = _null_rates(datasets, labels, n=300, resamples=300, seed=0)

    def bound(trials: int) -> float:  # 3 binomial standard errors around alpha
        return 3 * np.sqrt(ALPHA * (1 - ALPHA) / trials)

    two = rates["two_sided"]
    assert abs(two["label"] - ALPHA) <= bound(datasets * labels)
    # under the global null, FDR control is family-wise control
    assert two["any_label_after_fdr"] <= ALPHA + bound(datasets)
    assert abs(two["verdict"] - ALPHA) <= bound(datasets)
    old = rates["study_one_sided"]  # about twice alpha: outside the same bounds
    assert old["label"] > ALPHA + bound(datasets * labels)
    assert old["any_label_after_fdr"] > ALPHA + bound(datasets)


def _comparison(tmp_path, name, gap, seed):
    rng = np.random.default_rng(seed)
    n = 150
    targets = (rng.random((n, 2)) < 0.4).astype(float)
    a = 1 / (1 + np.exp(-(targets + rng.normal(size=(n, 2)))))
    b = 1 / (1 + np.exp(-((1 + gap) * targets + rng.normal(size=(n, 2)))))
    paths = [
        write_predictions(
            Predictions(["x", "y"], [f"i{k}" for k in range(n)], targets, s, "probability"),
            tmp_path / f"{name}_{key}.json",
        )
        for key, s in (("a", a), ("b", b))
    ]
    out = tmp_path / "run" / "ds" / "compare" / f"{name}.json"
    report, written = run_compare(
        *paths,
        BootstrapOptions(resamples=100, device="cpu"),
        cells={"a": f"{name}/a", "b": f"{name}/b", "dataset": "ds"},
        out=out,
        markdown=out.with_suffix(".md"),
    )
    assert written == [out, out.with_suffix(".md")]
    return report


def test_study_report_uses_the_two_sided_p_and_skips_run_records(tmp_path):
    reports = [_comparison(tmp_path, "one", 2.0, 0), _comparison(tmp_path, "two", 0.0, 1)]
    assert reports[0]["verdict"].startswith("B (one/b) is better than A (one/a)")
    assert (tmp_path / "run" / "ds" / "compare" / "one.json.run.json").is_file()
    study = collect_study(tmp_path / "run")
    assert len(study["comparisons"]) == 2  # the *.run.json records are not comparisons
    rows = {r["a"]: r for r in study["comparisons"]}
    p = [reports[k]["mean"]["p_bootstrap"] for k in range(2)]
    assert [rows["one/a"]["p_bootstrap"], rows["two/a"]["p_bootstrap"]] == p
    np.testing.assert_allclose(
        [rows["one/a"]["p_fdr_study"], rows["two/a"]["p_fdr_study"]],
        benjamini_hochberg(np.array(p)),
    )
    assert rows["one/a"]["p_study_one_sided"] == reports[0]["mean"]["p_study_one_sided"]
    assert rows["one/a"]["labels_differing"] == sum(r["significant"] for r in reports[0]["labels"])


def test_study_report_refuses_a_comparison_with_the_old_one_sided_p(tmp_path):
    _comparison(tmp_path, "one", 1.0, 0)
    path = tmp_path / "run" / "ds" / "compare" / "one.json"
    old = json.loads(path.read_text())
    old["version"] = 1
    path.write_text(json.dumps(old))
    with pytest.raises(DataFormatError, match="one.json: comparison report version 1"):
        collect_study(tmp_path / "run")
