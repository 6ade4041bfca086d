"""Stale steps: a changed input redoes its step and every step reading its output; the study report
never shows a comparison computed from files that changed since."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.data.synthetic import generate_dataset
from cxrprobe.errors import ConfigError
from cxrprobe.provenance import sha256_file
from cxrprobe.stats.predictions import Predictions, read_predictions, write_predictions
from cxrprobe.workflow.state import DONE, STALE, TO_RUN, plan_states, run_plan
from cxrprobe.workflow.steps import Paths, Step
from tests.test_study import CONFIG, TINY, TINY16, _mean_auroc


# ----------------------------------------------------------- the machinery, on stand-in steps
class Chain:
    """Three stand-in steps: ``src.txt`` → upper (a.txt) → reversed (b.txt), plus a "store"
    step (a folder with a zarr.json, as a cxrprobe store) whose action can be made to fail."""

    def __init__(self, root: Path) -> None:
        self.root, self.out, self.calls = root, root / "run", []
        self.src = root / "src.txt"
        self.src.write_text("abc")
        self.fail_store = False

    def _act(self, key, fn):
        def action(params, progress):
            self.calls.append((key, params.get("overwrite")))
            return fn(params)

        return action

    def steps(self, settings_a=None) -> list[Step]:
        a, b, store = self.out / "a.txt", self.out / "b.txt", self.out / "s.zarr"

        def upper(params):
            a.parent.mkdir(parents=True, exist_ok=True)
            a.write_text(self.src.read_text().upper())
            return {"n": 1}

        def reverse(params):
            b.write_text(a.read_text()[::-1])
            return {}

        def make_store(params):
            if params["overwrite"] or not store.exists():
                shutil.rmtree(store, ignore_errors=True)
                store.mkdir()
                attrs = {"kind": "x", "created": len(self.calls), "complete": False}
                (store / "zarr.json").write_text(json.dumps({"attributes": {"cxrprobe": attrs}}))
            if self.fail_store:
                raise KeyboardInterrupt
            meta = json.loads((store / "zarr.json").read_text())
            meta["attributes"]["cxrprobe"]["complete"] = True
            (store / "zarr.json").write_text(json.dumps(meta))
            return {}

        def step(key, output, settings, fn, params=None, inputs=()):
            return Step(
                key, "probe", output, settings, [], params or {}, self._act(key, fn), inputs
            )

        return [
            step("a", a, {"out": a, **(settings_a or {})}, upper, inputs=(self.src,)),
            step("b", b, {"source": a, "out": b}, reverse),
            step("s", store, {"source": b, "out": store}, make_store, {"overwrite": False}),
        ]

    def run(self, **settings) -> list[str]:
        self.calls.clear()
        return [o.status for o in run_plan(self.steps(settings or None), self.out)]


@pytest.fixture
def chain(tmp_path) -> Chain:
    chain = Chain(tmp_path)
    assert chain.run() == ["ran", "ran", "ran"]
    return chain


def test_changed_input_redoes_the_step_and_its_readers(chain):
    assert chain.run() == ["skipped"] * 3
    chain.src.write_text("xyz")
    states = plan_states(chain.steps(), chain.out)
    assert [s.state for s in states] == [STALE] * 3
    assert states[0].why == f"input {chain.src} changed"
    assert states[1].why == "input a.txt may change: step a runs first"
    assert chain.run() == ["redone"] * 3
    assert (chain.out / "b.txt").read_text() == "ZYX"
    assert chain.calls[-1] == ("s", True)  # a stale store is replaced (--overwrite)
    assert chain.run() == ["skipped"] * 3


def test_identical_new_output_leaves_readers_done(chain):
    chain.src.write_text("ABC")  # changed, but a.txt comes out the same
    assert chain.run() == ["redone", "skipped", "skipped"]


def test_output_changed_by_hand_is_redone(chain):
    (chain.out / "b.txt").write_text("edited")
    states = plan_states(chain.steps(), chain.out)
    assert [s.state for s in states] == [DONE, STALE, STALE]
    assert states[1].why == "its output b.txt was changed after the step ran"
    assert chain.run() == ["skipped", "redone", "skipped"]  # b comes back as it was
    assert (chain.out / "b.txt").read_text() == "CBA"


def test_interrupted_redo_is_never_taken_for_done_and_resumes(chain):
    chain.src.write_text("new")
    chain.fail_store = True
    with pytest.raises(KeyboardInterrupt):
        chain.run()
    assert chain.calls[-1] == ("s", True)
    states = plan_states(chain.steps(), chain.out)
    assert states[2].state == TO_RUN and states[2].why == "resuming an interrupted redo"
    chain.fail_store = False
    assert chain.run() == ["skipped", "skipped", "ran"]
    assert chain.calls == [("s", False)]  # the new, half-made store is resumed, not replaced
    assert chain.run() == ["skipped"] * 3


def test_redo_interrupted_before_replacing_is_redone_again(chain):
    chain.src.write_text("new")
    steps = chain.steps()
    original = steps[2].action

    def killed_at_start(params, progress):
        raise KeyboardInterrupt

    steps[2].action = killed_at_start
    with pytest.raises(KeyboardInterrupt):
        run_plan(steps, chain.out)
    state = plan_states(chain.steps(), chain.out)[2]
    assert state.state == STALE and state.why.startswith("a redo was interrupted")
    steps[2].action = original
    assert chain.run() == ["skipped", "skipped", "redone"] and chain.calls == [("s", True)]


def test_changed_settings_refuse_before_anything_runs(chain):
    chain.src.write_text("new")
    with pytest.raises(ConfigError, match=r"step a already ran with different settings \(seed\)"):
        chain.run(seed=1)
    assert chain.calls == []
    assert plan_states(chain.steps({"seed": 1}), chain.out)[0].state == "refused"


def test_record_without_input_identities_is_stale(chain):
    record = Paths(chain.out).record("b")
    saved = json.loads(record.read_text())
    del saved["inputs"]
    record.write_text(json.dumps(saved))
    assert plan_states(chain.steps(), chain.out)[1].state == STALE
    assert chain.run() == ["skipped", "redone", "skipped"]


# ---------------------------------------------------------------------- a whole small study
STUDY = CONFIG.replace("seed = 1 }", 'seed = 1, labels_csv = "data/labels.csv" }')


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stale")
    generate_dataset(folder / "data", n=90, size=64, seed=3)
    (folder / "study.toml").write_text(STUDY.format(tiny=TINY, tiny16=TINY16))
    (folder / "deeper.toml").write_text(
        STUDY.format(tiny=TINY, tiny16=TINY16.replace("depth = 1", "depth = 2"))
    )
    first = CliRunner().invoke(main, ["study", str(folder / "study.toml")])
    assert first.exit_code == 0, first.output
    return folder


def _study(folder: Path, config: str, *args: str):
    return CliRunner().invoke(main, ["study", str(folder / config), *args])


def _states(output: str) -> dict[str, str]:
    return {
        line.split("] ")[1]: line[1:].split("]")[0]
        for line in output.splitlines()
        if line.startswith("[")
    }


def _check_report(run: Path) -> dict:
    """The report's cells equal sklearn on the current predictions, and every comparison's
    recorded sha256 is that of the current predictions files."""
    report = json.loads((run / "report.json").read_text())
    assert report["stale"] == []
    for cell in report["cells"]:
        expected = _mean_auroc(Path(cell["predictions"]))
        assert cell["mean_auroc"] == pytest.approx(expected, abs=1e-12)
    for row in report["comparisons"]:
        models = json.loads(Path(row["report"]).read_text())["models"]
        assert all(sha256_file(m["path"]) == m["sha256"] for m in models.values())
    return report


def test_report_leaves_out_comparisons_whose_predictions_changed(study):
    run = study / "run"
    preds = run / "syn" / "b16" / "probe" / "predictions.json"
    pred = read_predictions(preds)
    flipped = Predictions(**{**pred.__dict__, "scores": 1.0 - pred.scores})
    write_predictions(flipped, preds)

    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "1 comparison(s) not shown" in result.output
    report = json.loads((run / "report.json").read_text())
    assert [(r["a"], r["b"]) for r in report["stale"]] == [("b16/probe", "p14/probe")]
    assert "changed after the comparison was computed" in report["stale"][0]["why"]
    shown = [(r["a"], r["b"]) for r in report["comparisons"]]
    assert ("p14/probe", "p14/finetune") in shown and ("b16/probe", "p14/probe") not in shown
    assert ("b16", "probe") not in {(c["init"], c["method"]) for c in report["cells"]}
    if len(shown) == 1:  # the stale comparison is out of the FDR family too
        assert report["comparisons"][0]["p_fdr_study"] == report["comparisons"][0]["p_bootstrap"]
    assert "## Not shown" in (run / "report.md").read_text()
    assert json.loads((run / "run.json").read_text())["command"] == "cxrprobe study"
    assert json.loads((run / "report.run.json").read_text())["command"] == "cxrprobe report"

    again = _study(study, "study.toml")
    assert again.exit_code == 0, again.output
    assert "~ syn/b16/probe: stale (its output syn/b16/probe/predictions.json was changed" in (
        again.output
    )
    _check_report(run)


def test_redone_upstream_step_redoes_probe_comparison_and_report(study):
    run = study / "run"
    refused = _study(study, "deeper.toml")
    assert refused.exit_code == 2 and "syn/b16/extract already ran with different" in refused.output
    listed = _study(study, "deeper.toml", "--dry-run")
    assert listed.exit_code == 2 and _states(listed.output)["syn/b16/extract"] == "refused"

    shutil.rmtree(run / "syn" / "b16" / "embeddings.zarr")  # as the refusal says
    Paths(run).record("syn/b16/extract").unlink()
    listed = _study(study, "deeper.toml", "--dry-run")
    assert listed.exit_code == 0, listed.output
    states = _states(listed.output)
    assert states.pop("syn/b16/extract") == "to run"
    readers = {key for key in states if "b16" in key}  # its probe(s) and comparison
    assert {"syn/b16/probe", "syn/compare/p14/probe_vs_b16/probe"} <= readers
    assert {states[key] for key in readers} == {"stale"}
    assert {state for key, state in states.items() if key not in readers} == {"done"}
    assert "input syn/b16/embeddings.zarr may change: step syn/b16/extract runs first" in (
        listed.output
    )

    preds = run / "syn" / "b16" / "probe" / "predictions.json"
    before, report_before = sha256_file(preds), (run / "report.md").read_text()
    result = _study(study, "deeper.toml")
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier, skipped") == len(states) - len(readers)
    assert (
        "~ syn/b16/probe: stale (input syn/b16/embeddings.zarr changed), redoing" in result.output
    )
    assert "~ syn/compare/p14/probe_vs_b16/probe: stale" in result.output
    assert sha256_file(preds) != before and (run / "report.md").read_text() != report_before
    _check_report(run)
    again = _study(study, "deeper.toml").output
    assert again.count("finished earlier, skipped") == len(states) + 1


def test_changed_label_table_redoes_every_step(study):
    run = study / "run"
    labels = study / "data" / "labels.csv"
    table = pd.read_csv(labels)
    finding = next(c for c in ("pleural_effusion", "cardiomegaly") if c in table)
    table.loc[::3, finding] = 1.0 - table.loc[::3, finding]  # the labels were corrected
    table.to_csv(labels, index=False)

    listed = _study(study, "deeper.toml", "--dry-run")
    assert listed.exit_code == 0, listed.output
    states = _states(listed.output)
    assert set(states.values()) == {"stale"}
    assert f"input {labels} changed" in listed.output

    old = {p: sha256_file(p) for p in run.glob("syn/*/*/predictions.json")}
    result = _study(study, "deeper.toml")
    assert result.exit_code == 0, result.output
    assert "finished earlier" not in result.output
    assert result.output.count(": stale (") == len(states)
    assert all(sha256_file(p) != digest for p, digest in old.items())
    manifest = pd.read_parquet(run / "syn" / "manifest.parquet").set_index("image_id")
    np.testing.assert_array_equal(
        manifest.loc[table["image_id"], finding].to_numpy(), table[finding].to_numpy()
    )
    _check_report(run)


def test_a_copied_study_folder_is_done_and_reports_the_same(tmp_path):
    """Config, data and run copied elsewhere (new mtimes, new absolute paths): every step is
    done, the report shows the same cells, and a changed file in the copy is still caught."""
    study = tmp_path / "first"  # its own study: the module's is changed by the tests above
    generate_dataset(study / "data", n=90, size=64, seed=3)
    (study / "study.toml").write_text(STUDY.format(tiny=TINY, tiny16=TINY16))
    first = _study(study, "study.toml")
    assert first.exit_code == 0, first.output
    assert CliRunner().invoke(main, ["report", str(study / "run")]).exit_code == 0
    original = json.loads((study / "run" / "report.json").read_text())
    copy = tmp_path / "elsewhere"
    shutil.copytree(study, copy)
    listed = _study(copy, "study.toml", "--dry-run")
    assert listed.exit_code == 0, listed.output
    assert set(_states(listed.output).values()) == {"done"}
    result = CliRunner().invoke(main, ["report", str(copy / "run")])
    assert result.exit_code == 0, result.output
    report = _check_report(copy / "run")
    assert [(c["init"], c["method"], c["mean_auroc"]) for c in report["cells"]] == [
        (c["init"], c["method"], c["mean_auroc"]) for c in original["cells"]
    ]
    assert all(str(copy) in c["predictions"] for c in report["cells"])
    preds = copy / "run" / "syn" / "b16" / "probe" / "predictions.json"
    pred = read_predictions(preds)
    write_predictions(Predictions(**{**pred.__dict__, "scores": 1.0 - pred.scores}), preds)
    assert CliRunner().invoke(main, ["report", str(copy / "run")]).exit_code == 0
    stale = json.loads((copy / "run" / "report.json").read_text())["stale"]
    assert [(r["a"], r["b"]) for r in stale] == [("b16/probe", "p14/probe")]


def test_settings_older_records_implied_are_no_change(tmp_path):
    """A version-2 compare record has no name_a/name_b (the names came from its cells): not a
    change; any other missing or changed setting still is."""
    from cxrprobe.workflow.state import changed_settings

    out = tmp_path / "c.json"
    settings = {"file_a": tmp_path / "a.json", "name_a": "p14/probe", "name_b": "b16/probe"}
    step = Step("syn/compare/x", "compare", out, settings, [], {}, lambda p, q: {})
    old = {"file_a": str(tmp_path / "a.json")}
    record = {"version": 2, "output": str(out), "settings": old}
    assert changed_settings(step, record) == []
    assert changed_settings(step, {**record, "version": 3}) == ["name_a", "name_b"]
    other = Step("syn/p14/probe", "probe", out, settings, [], {}, lambda p, q: {})
    assert changed_settings(other, record) == ["name_a", "name_b"]
    assert changed_settings(step, {**record, "settings": {**old, "seed": 1}}) == ["seed"]
