"""Which cells a study plans: pretraining steps, exclusions and comparison lists (nothing runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cxrprobe.cli import main
from cxrprobe.errors import ConfigError
from cxrprobe.workflow.cells import Pretrain, init_pairs, pretraining_order
from cxrprobe.workflow.config import study_from_mapping
from cxrprobe.workflow.plan import build_plan, comparisons


def _study(tmp_path: Path, **top: Any) -> dict[str, Any]:
    inits = top.pop("inits", None) or [
        {"name": "dinov2", "init": "random"},
        {"name": "imagenet", "init": "random"},
        {"name": "mimic", "pretrain": {"dataset": "mimic", "from": "imagenet"}},
    ]
    return {
        "out": str(tmp_path / "run"),
        "datasets": [
            {"name": name, "adapter": "generic", "root": str(tmp_path)}
            for name in ("vindr", "mimic")
        ],
        "inits": inits,
        **top,
    }


def _load(tmp_path: Path, **top: Any):
    return study_from_mapping(_study(tmp_path, **top), base=tmp_path, commands=main.commands)


def _problems(tmp_path: Path, **top: Any) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, **top)
    return str(info.value)


def test_pretraining_runs_first_and_becomes_the_init_elsewhere(tmp_path):
    config = _load(tmp_path, methods=["finetune"], comparisons="all")
    steps = {s.key: s for s in build_plan(config, main.commands)}
    keys = list(steps)
    assert keys[:3] == ["mimic/manifest", "mimic/preprocess", "mimic/imagenet/finetune"]
    assert keys.count("mimic/imagenet/finetune") == 1  # the cell is the pretraining run
    run = (tmp_path / "run" / "mimic" / "imagenet" / "finetune").resolve()
    used = steps["vindr/mimic/finetune"]
    assert used.params["init"] == f"run:{run}" and used.params["weights"] is None
    assert used.inputs == (run / "checkpoints" / "best.pt",)  # redone when the run is redone
    assert "mimic/mimic/finetune" not in steps  # not evaluated on its own pretraining data
    assert comparisons(config, "mimic") == [("dinov2/finetune", "imagenet/finetune")]
    assert ("imagenet/finetune", "mimic/finetune") in comparisons(config, "vindr")


def test_pretraining_with_its_own_options_is_a_separate_run(tmp_path):
    inits = [
        {"name": "imagenet", "init": "random"},
        {
            "name": "mimic",
            "pretrain": {
                "dataset": "mimic",
                "from": "imagenet",
                "options": {"epochs": 3},
                "exclude_dataset": False,
            },
        },
    ]
    steps = {
        s.key: s
        for s in build_plan(_load(tmp_path, inits=inits, methods=["finetune"]), main.commands)
    }
    pretrain = steps["mimic/_pretrain/mimic"]
    assert pretrain.params["epochs"] == 3 and pretrain.params["init"] == "random"
    run = (tmp_path / "run" / "mimic" / "_pretrain" / "mimic").resolve()
    assert steps["mimic/mimic/finetune"].params["init"] == f"run:{run}"  # exclude_dataset = false
    assert steps["mimic/imagenet/finetune"].params.get("epochs") != 3


def test_chained_pretraining_is_ordered_and_cycles_are_refused(tmp_path):
    chain = {
        "c": {"dataset": "vindr", "from": "b"},
        "b": {"dataset": "mimic", "from": "a"},
        "a": None,
    }
    pretrains = {
        k: None if v is None else Pretrain(v["dataset"], v["from"]) for k, v in chain.items()
    }
    assert pretraining_order(pretrains) == ["b", "c"]

    cycle = [
        {"name": "a", "pretrain": {"dataset": "mimic", "from": "b"}},
        {"name": "b", "pretrain": {"dataset": "mimic", "from": "a"}},
        {"name": "own", "pretrain": {"dataset": "vindr", "from": "own"}},
    ]
    message = _problems(tmp_path, inits=cycle)
    assert (
        "pretraining cycle: 'a', which is pretrained from 'b', which is pretrained from 'a'"
        in message
    )
    assert "pretraining cycle: 'own', which is pretrained from 'own'" in message


def test_bad_pretrain_exclude_and_comparisons_are_reported_together(tmp_path):
    inits = [
        {"name": "dinov2", "init": "random"},
        {"name": "mimic", "init": "mimic", "pretrain": {"dataset": "nih", "from": "x", "how": 1}},
    ]
    message = _problems(
        tmp_path,
        inits=inits,
        exclude=[["mimic", "padchest"], ["nobody", "vindr"]],
        comparisons=[["dinov2", "dinov2"], ["dinov2", "resnet"]],
    )
    for expected in (
        "init 'mimic' pretrain: unknown key(s) ['how']",
        "init 'mimic': ['init'] come from its pretraining run",
        "pretrain dataset 'nih' is not one of the datasets ['vindr', 'mimic']",
        "pretrain from 'x' is not one of the inits",
        "exclude ['mimic', 'padchest']: 'padchest' is not one of the datasets",
        "exclude ['nobody', 'vindr']: 'nobody' is not one of the inits",
        "comparisons ['dinov2', 'dinov2']: an init compared with itself",
        "comparisons ['dinov2', 'resnet']: ['resnet'] not among the inits",
    ):
        assert expected in message
    assert "comparisons = 'some'" in _problems(tmp_path, comparisons="some")


def test_exclusions_drop_cells_and_their_comparisons(tmp_path):
    config = _load(
        tmp_path, methods=["probe"], exclude=[["dinov2", "vindr"]], comparisons="reference"
    )
    keys = [s.key for s in build_plan(config, main.commands)]
    assert "vindr/dinov2/extract" not in keys and "mimic/dinov2/extract" in keys
    assert comparisons(config, "vindr") == []  # every pair has the reference, dinov2
    assert comparisons(config, "mimic") == [("dinov2/probe", "imagenet/probe")]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("reference", [("b", "a"), ("b", "c")]),
        ("all", [("a", "b"), ("a", "c"), ("b", "c")]),
        ([["a", "b"], ["a", "c"]], [("b", "a"), ("c", "a")]),
    ],
)
def test_init_pairs_are_a_then_b(mode, expected):
    assert init_pairs(mode, ["a", "b", "c"], reference="b") == expected


def test_existing_configs_keep_reference_comparisons(tmp_path):
    inits = [{"name": "p", "init": "random"}, {"name": "q", "init": "random"}]
    config = _load(tmp_path, inits=inits, reference="q")
    assert config.comparisons == "reference"
    assert comparisons(config, "vindr") == [
        ("q/probe", "p/probe"),
        ("q/finetune", "p/finetune"),
        ("p/probe", "p/finetune"),
        ("q/probe", "q/finetune"),
    ]
    listed = _load(tmp_path, inits=inits, comparisons=[["p", "q"]])
    assert comparisons(listed, "vindr") == [("q/probe", "p/probe"), ("q/finetune", "p/finetune")]
    steps = {s.key: s for s in build_plan(listed, main.commands)}
    finetunes = steps["vindr/compare/p/finetune_vs_q/finetune"].params
    assert finetunes["validation_a"].name == "val_predictions.json"
    assert finetunes["validation_a"].parent.name == "finetune"
    probes = steps["vindr/compare/p/probe_vs_q/probe"].params  # probes write theirs too
    assert probes["validation_a"] == probes["file_a"].with_name("predictions.val.json")
    assert probes["validation_b"].parent.parent.name == "p"
