"""A study TOML and the command line agree: every key of every stage round-trips through the
printed ``--dry-run`` command, every value is checked at load as the CLI checks it (all problems
in one message), and the old key spellings still work with a warning."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.cli.options import CommaList
from cxrprobe.cli.probe import GridType
from cxrprobe.errors import ConfigError
from cxrprobe.workflow.commands import key_of, table_params
from cxrprobe.workflow.config import load_study, study_from_mapping
from cxrprobe.workflow.plan import CURVE_KEYS, build_plan

# Values whose meaning a generic sample cannot guess (anything else: see _sample).
OVERRIDES: dict[str, Any] = {
    "device": "cpu",
    "features": "cls+mean",
    "max_memory": "512MiB",
    "by": ["sex", "age:0,40,60"],
    "encoding": "utf-8",
    "findings": "cardiomegaly,nodule",
    "train_fraction": [0.5, 1.0],
}
READER_ONLY = {"aggregation": "vindr", "labeler": "mimic"}  # manifest options of one adapter


def _sample(param: click.Parameter) -> Any:
    """A valid value for ``param``, as low as allowed: 0, 0.0 and False where they are valid
    (the values the plan once dropped from its printed commands)."""
    kind = param.type
    if key_of(param) in OVERRIDES:
        return OVERRIDES[key_of(param)]
    if isinstance(param, click.Option) and param.is_flag:
        return not param.secondary_opts  # --no-X where there is one, else the bare flag
    if isinstance(kind, GridType):
        return [0.01, 1.0, 100.0]
    if isinstance(kind, CommaList):
        return [0, 3] if isinstance(kind.item, click.types.IntParamType) else ["train", "extra"]
    if isinstance(kind, click.Choice):
        return kind.choices[-1]
    if isinstance(kind, click.IntRange):
        return kind.min if kind.min is not None else 0
    if isinstance(kind, click.FloatRange):
        return 0.5 if kind.min_open else float(kind.min or 0.0)
    if isinstance(kind, click.types.IntParamType):
        return 0
    if isinstance(kind, click.types.FloatParamType):
        return 0.0
    if isinstance(kind, click.Path):
        return f"inputs/{key_of(param)}.file"
    return "x"


def _expected(param: click.Parameter, value: Any, base: Path) -> Any:
    """What the command should receive for a TOML ``value``, written out independently of click."""
    if isinstance(param.type, click.Path):
        return (base / value).resolve()
    if isinstance(value, list):
        return tuple(value)
    return value


def _full_study(base: Path) -> dict[str, Any]:
    """A study whose tables set every option of every stage's command."""
    tables = {
        stage: {key: _sample(param) for key, param in table_params(main.commands, stage).items()}
        for stage in ("preprocess", "extract", "probe", "finetune", "compare")
    }
    manifest = {
        k: _sample(p)
        for k, p in table_params(main.commands, "manifest").items()
        if k not in READER_ONLY
    }
    generic = {**manifest, "column_map": "inputs/columns.json"}
    return {
        "out": "run",
        "seed": 0,
        "device": "cpu",
        **tables,
        "datasets": [
            {"name": "gen", "adapter": "generic", "root": "data", "options": generic},
            *(
                {
                    "name": adapter,
                    "adapter": adapter,
                    "root": "data",
                    "options": {key: _sample(table_params(main.commands, "manifest")[key])},
                }
                for key, adapter in READER_ONLY.items()
            ),
        ],
        "inits": [
            {
                "name": "full",
                "init": "random",
                "weights": "weights/w.safetensors",
                "arch": "vit_base_patch16_224",
                "model_kwargs": {"depth": 1, "embed_dim": 32},
                "mean": [0.5, 0.25, 0.0],
                "std": [0.25, 0.25, 0.25],
            },
            {"name": "bare", "init": "dinov2"},
        ],
    }


def _parsed(step) -> dict[str, Any]:
    """The printed command parsed back by the CLI's own click command."""
    words = shlex.split(step.command)
    assert words[:2] == ["cxrprobe", step.stage]
    return main.commands[step.stage].make_context(step.stage, words[2:]).params


def test_every_toml_key_of_every_stage_round_trips_through_the_printed_command(tmp_path):
    raw = _full_study(tmp_path)
    config = study_from_mapping(raw, base=tmp_path, commands=main.commands)
    steps = build_plan(config, main.commands)
    tables = {
        "preprocess": raw["preprocess"],
        "extract": raw["extract"],
        "probe": raw["probe"],
        "finetune": raw["finetune"],
        "compare": raw["compare"],
    }
    datasets = {d["name"]: d["options"] for d in raw["datasets"]}
    covered = {stage: set() for stage in (*tables, "manifest")}
    for step in steps:
        params = _parsed(step)
        dataset = step.key.split("/")[0]
        table = datasets[dataset] if step.stage == "manifest" else tables[step.stage]
        by_key = table_params(main.commands, step.stage)
        if step.stage == "probe" and not step.key.endswith("/curve"):  # the curve step's keys
            table = {k: v for k, v in table.items() if k not in CURVE_KEYS}
            assert params["train_fractions"] is None and params["repeats"] == 1
        for key, value in table.items():
            param = by_key[key]
            expected = _expected(param, value, tmp_path)
            got = params[param.name]
            assert got == expected and type(got) is type(expected), (step.key, key, got, value)
            covered[step.stage].add(key)
        if step.stage in ("extract", "finetune") and "/full/" in step.key:
            model = raw["inits"][0]
            assert params["weights"] == (tmp_path / model["weights"]).resolve()
            assert params["model_kwargs"] == model["model_kwargs"]
            assert (params["mean"], params["std"]) == (tuple(model["mean"]), tuple(model["std"]))
            assert params["init"] == "random" and params["arch"] == model["arch"]
    for stage, keys in covered.items():
        # every option of every stage was tried
        assert keys == set(table_params(main.commands, stage)), stage


def test_zero_and_false_values_reach_the_printed_command(tmp_path):
    raw = _full_study(tmp_path)
    raw["finetune"].update(weight_decay=0.0, hflip=0, rotate=0, patience=0)
    steps = build_plan(
        study_from_mapping(raw, base=tmp_path, commands=main.commands), main.commands
    )
    finetune = next(s for s in steps if s.stage == "finetune")
    for flag in ("--weight-decay 0.0", "--hflip 0", "--rotate 0", "--patience 0"):
        assert flag in finetune.command
    from cxrprobe.finetune.recipe import finetune_config

    recipe = finetune_config(_parsed(finetune))
    assert (recipe.weight_decay, recipe.hflip, recipe.rotate) == (0.0, 0.0, 0.0)
    assert recipe.patience is None  # 0 on the command line: never stop early
    preprocess = next(s for s in steps if s.stage == "preprocess")
    assert "--no-equalize" in preprocess.command and "--no-minmax" in preprocess.command


BAD = """
seed = "abc"
device = "gpu7"
[preprocess]
equalize = "yes"
[extract]
workers = 2.5
[probe]
backend = "foo"
k = [0, "two"]
[finetune]
batch_size = -3
epochs = "ten"
unknown_knob = 1
[[datasets]]
name = "d"
adapter = "chexpert"
root = "data"
options = { split = "sideways", aggregation = "any" }
[[inits]]
name = "i"
init = "random"
model_kwargs = "depth"
"""


def test_every_bad_value_is_reported_at_load_in_one_message(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_study(path, main.commands)
    message = str(info.value)
    for expected in (
        str(path),
        "seed = 'abc': 'abc' is not a valid integer",
        "device = 'gpu7': 'gpu7' is not a device",
        "[preprocess] equalize = 'yes': expected true or false",
        "[extract] workers = 2.5: '2.5' is not a valid integer",
        "[probe] backend = 'foo': 'foo' is not one of 'torch', 'sklearn', 'cuml'",
        "[probe] k = [0, 'two']: 'two' is not a valid integer",
        "[finetune] batch_size = -3: -3 is not in the range x>=1",
        "[finetune] epochs = 'ten': 'ten' is not a valid integer",
        "[finetune] has unknown option(s) ['unknown_knob'] (no such `cxrprobe finetune` option)",
        "dataset 'd' options split = 'sideways': 'sideways' is not one of 'official', 'random'",
        "options ['aggregation'] do not apply to the chexpert adapter",
        "init 'i' model_kwargs = 'depth': not valid JSON",
    ):
        assert expected in message, expected
    assert message.count("\n  - ") == 12
    result = CliRunner().invoke(main, ["study", str(path), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "12 problem(s), nothing was run" in result.output


OLD = """
out = "run"
[extract]
img_size = 56
num_workers = 0
[probe]
selection = "per-finding"
ks = [5, 7]
[finetune]
num_workers = 0
class_weights = false
[[datasets]]
name = "d"
adapter = "generic"
root = "data"
options = { split = "random", val_frac = 0.25, test_frac = 0.0 }
[[inits]]
name = "i"
init = "random"
"""


def test_old_keys_still_work_with_a_deprecation_warning(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(OLD)
    (tmp_path / "data").mkdir()  # the dataset root: the dry run checks that it exists
    with pytest.warns(DeprecationWarning) as caught:
        config = load_study(path, main.commands)
    assert len(caught) == 8
    assert config.extract == {"size": 56, "workers": 0}
    assert config.probe == {"select": "per-finding", "k": [5, 7]}
    assert config.finetune == {"workers": 0, "class_weight": "none"}
    assert config.datasets[0].options == {
        "split": "random",
        "val_fraction": 0.25,
        "test_fraction": 0.0,
    }
    commands = {s.stage: s.command for s in build_plan(config, main.commands)}
    assert "--workers 0 --class-weight none" in commands["finetune"]
    assert "--val-fraction 0.25 --test-fraction 0.0" in commands["manifest"]
    result = CliRunner().invoke(main, ["study", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "Warning: dataset 'd' options val_frac is deprecated and goes in the next release; "
        "use val_fraction" in result.output
    )
    both = OLD.replace("ks = [5, 7]", "ks = [5, 7]\nk = [5]")
    path.write_text(both)
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="sets both ks and k"):
        load_study(path, main.commands)
