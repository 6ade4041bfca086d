"""The study workflow: config checks, a whole small study from the CLI, skipping, refusal, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cache import open_embeddings
from cxrprobe.cli import main
from cxrprobe.data.synthetic import generate_dataset
from cxrprobe.errors import ConfigError
from cxrprobe.stats.options import BootstrapOptions
from cxrprobe.stats.predictions import read_predictions
from cxrprobe.stats.report import evaluate_file
from cxrprobe.workflow.config import load_study

TINY = "{ depth = 1, embed_dim = 32, num_heads = 2 }"
TINY16 = "{ depth = 1, embed_dim = 32, num_heads = 2, patch_size = 8 }"
CONFIG = """
out = "run"
seed = 0
device = "cpu"
reference = "b16"

[preprocess]
size = 56
workers = 1

[probe]
grid = [0.01, 1.0, 100.0]
train_fraction = [0.5, 1.0]
repeats = 2

[finetune]
epochs = 1
batch_size = 16
lr = 0.001

[compare]
resamples = 200

[[datasets]]
name = "syn"
adapter = "generic"
root = "data"
options = {{ split = "random", val_fraction = 0.25, test_fraction = 0.35, seed = 1 }}

[[inits]]
name = "p14"
init = "random"
arch = "vit_base_patch14_dinov2"
model_kwargs = {tiny}
methods = ["probe", "finetune"]

[[inits]]
name = "b16"
init = "random"
arch = "vit_base_patch16_224"
model_kwargs = {tiny16}
methods = ["probe"]
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    generate_dataset(folder / "data", n=90, size=64, seed=3)
    (folder / "study.toml").write_text(CONFIG.format(tiny=TINY, tiny16=TINY16))
    return folder


@pytest.fixture(scope="module")
def ran(study_dir) -> tuple[Path, str]:
    result = CliRunner().invoke(main, ["study", str(study_dir / "study.toml")])
    assert result.exit_code == 0, result.output
    return study_dir / "run", result.output


def _mean_auroc(path: Path) -> float:
    pred = read_predictions(path)
    values = []
    for j in range(len(pred.labels)):
        keep = ~np.isnan(pred.targets[:, j])
        y = pred.targets[keep, j]
        if 0 < y.sum() < len(y):
            values.append(roc_auc_score(y, pred.scores[keep, j]))
    return float(np.mean(values))


def test_dry_run_lists_every_step_with_its_command(study_dir):
    result = CliRunner().invoke(main, ["study", str(study_dir / "study.toml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    keys = [line.split("] ")[1] for line in result.output.splitlines() if line.startswith("[")]
    assert keys == [
        "syn/manifest",
        "syn/preprocess",
        "syn/p14/extract",
        "syn/p14/probe",
        "syn/p14/curve",
        "syn/p14/finetune",
        "syn/b16/extract",
        "syn/b16/probe",
        "syn/b16/curve",
        "syn/compare/p14/probe_vs_b16/probe",
        "syn/compare/p14/finetune_vs_p14/probe",
    ]
    assert "cxrprobe extract --init random --arch vit_base_patch14_dinov2" in result.output
    assert "cxrprobe compare" in result.output


def test_study_runs_and_report_matches_sklearn(ran):
    run, output = ran
    report = json.loads((run / "report.json").read_text())
    cells = {(c["init"], c["method"]): c for c in report["cells"]}
    assert set(cells) == {("p14", "probe"), ("p14", "finetune"), ("b16", "probe")}
    for (init, method), cell in cells.items():
        expected = _mean_auroc(run / "syn" / init / method / "predictions.json")
        assert cell["mean_auroc"] == pytest.approx(expected, abs=1e-12)
        assert cell["ci"][0] <= cell["mean_auroc"] <= cell["ci"][1]
    assert len(report["comparisons"]) == 2
    assert all(0 <= r["p_fdr_study"] <= 1 for r in report["comparisons"])
    assert (run / "report.png").stat().st_size > 0
    assert "| syn | p14 | probe |" in (run / "report.md").read_text()
    assert "Comparisons (B − A)" in output
    for init in ("p14", "b16"):  # every stage ran at the study's size
        assert (
            open_embeddings(run / "syn" / init / "embeddings.zarr").provenance["model"]["img_size"]
            == 56
        )


def _youden(targets: np.ndarray, scores: np.ndarray) -> float:
    """The reference: sklearn's ROC points, the highest threshold of largest TPR - FPR ("nothing
    positive", sklearn's inf, is the next float above the highest score)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(targets, scores, drop_intermediate=False)
    best = float(thresholds[int(np.argmax(tpr - fpr))])
    return best if np.isfinite(best) else float(np.nextafter(scores.max(), np.inf))


def test_probe_comparisons_choose_thresholds_on_the_probes_validation_predictions(ran):
    run, _ = ran
    report = json.loads((run / "syn" / "compare" / "p14-probe_vs_b16-probe.json").read_text())
    for key, init in (("a", "b16"), ("b", "p14")):
        val_file = run / "syn" / init / "probe" / "predictions.val.json"
        assert report["validation"][key]["path"] == str(val_file)
        assert report["thresholds"][key]["chosen_on"] == f"validation file {val_file}"
        val = read_predictions(val_file)
        assert val.provenance["scored_split"] == "val"
        for j, row in enumerate(report["thresholds"][key]["labels"]):
            keep = ~np.isnan(val.targets[:, j])
            y = val.targets[keep, j]
            if 0 < y.sum() < len(y):
                assert row["threshold"] == pytest.approx(_youden(y, val.scores[keep, j]))


def test_report_curves_equal_the_stats_library_on_the_point_files(ran):
    """The curve table: per (init, fraction) the mean over repeats of `evaluate`'s mean AUROC and
    of its CI endpoints, computed here directly on each point's predictions file."""
    run, output = ran
    report = json.loads((run / "report.json").read_text())
    compared = json.loads(Path(report["comparisons"][0]["report"]).read_text())
    options = BootstrapOptions(**compared["options"])
    rows = {(r["init"], r["fraction"]): r for r in report["curves"]}
    assert set(rows) == {(i, f) for i in ("p14", "b16") for f in (0.5, 1.0)}
    for (init, fraction), row in rows.items():
        files = sorted((run / "syn" / init / "curve").glob(f"f{fraction:g}_r[0-9].json"))
        assert len(files) == row["repeats"] == 2
        means = [evaluate_file(f, options)["mean"] for f in files]
        assert row["mean_auroc"] == pytest.approx(np.mean([m["auroc"] for m in means]), abs=1e-12)
        for k in (0, 1):
            assert row["ci"][k] == pytest.approx(np.mean([m["auroc_ci"][k] for m in means]))
        assert row["per_repeat"] == pytest.approx([_mean_auroc(f) for f in files], abs=1e-12)
    assert rows[("p14", 1.0)]["sd_repeats"] == 0.0  # fraction 1: the same subset every repeat
    assert (run / "report_curves.png").stat().st_size > 0
    assert "| syn | p14 | linear-probe | 0.5 |" in (run / "report.md").read_text()
    assert "Label efficiency" in output


def test_rerun_skips_finished_steps_and_changed_settings_are_refused(ran, study_dir):
    run, _ = ran
    before = {p: p.stat().st_mtime_ns for p in (run / ".steps").iterdir()}
    again = CliRunner().invoke(main, ["study", str(study_dir / "study.toml")])
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier, skipped") == 11
    assert {p: p.stat().st_mtime_ns for p in (run / ".steps").iterdir()} == before

    changed = study_dir / "changed.toml"
    changed.write_text(
        CONFIG.format(tiny=TINY, tiny16=TINY16).replace("[0.01, 1.0, 100.0]", "[0.1, 10.0]")
    )
    refused = CliRunner().invoke(main, ["study", str(changed)])
    assert refused.exit_code == 2
    assert "step syn/p14/probe already ran with different settings (grid)" in refused.output
    assert "Traceback" not in refused.output


def test_report_command_and_its_errors(ran, tmp_path):
    run, _ = ran
    result = CliRunner().invoke(main, ["report", str(run), "--alpha", "0.1"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "report.json").read_text())["alpha"] == 0.1
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "run folder not found" in missing.output
    empty = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert empty.exit_code == 1 and "no comparison reports" in empty.output


def test_config_problems_are_reported_together(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'methods = ["probe", "train"]\nreference = "x"\n[probe]\nlearning_rate = 1\n'
        '[[inits]]\nname = "a b"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_study(bad, main.commands)
    message = str(info.value)
    for expected in (
        "[[datasets]]",
        "methods",
        "reference 'x'",
        "name 'a b'",
        "[probe] has unknown option(s) ['learning_rate']",
    ):
        assert expected in message
    result = CliRunner().invoke(main, ["study", str(tmp_path / "absent.toml")])
    assert result.exit_code == 1 and "study config not found" in result.output


def test_relative_paths_resolve_against_the_config_folder(study_dir):
    config = load_study(study_dir / "study.toml", main.commands)
    assert config.out == (study_dir / "run").resolve()
    assert config.datasets[0].root == (study_dir / "data").resolve()
    assert config.methods_of(config.inits[1]) == ("probe",)
