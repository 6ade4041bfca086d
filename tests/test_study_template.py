"""The shipped study template: it parses, its dry run lists every step of the study, and it runs
end to end on synthetic stand-ins for all six datasets (tiny models, one epoch, 28 px)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.data.finding_sets import get_finding_set
from cxrprobe.stats.predictions import read_predictions
from cxrprobe.weights import save_state_dict
from tests.study_standins import write_standins
from tests.test_study import _mean_auroc

DATASETS = ["vindr", "chestxray14", "chexpert", "mimic", "padchest", "uka"]
INITS = ["dinov2", "imagenet", "mimic"]
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
ARCHS = {  # the hub architecture of each init, and the tiny overrides its test weights have
    "dinov2": ("vit_base_patch14_dinov2.lvd142m", TINY),
    "imagenet": ("vit_base_patch16_224.augreg_in21k", {**TINY, "patch_size": 14}),
}
WEIGHT_FILES = {  # the template's placeholders
    "dinov2": "dinov2_vitb14_pretrain.pth",
    "imagenet": "vit_base_patch16_224.augreg_in21k.safetensors",
}
SIZE = 28


def _template() -> str:
    result = CliRunner().invoke(main, ["study", "--template", "paper"])
    assert result.exit_code == 0, result.output
    return result.output


def _expected_steps() -> list[str]:
    """The study's steps written out from the paper's design: the MIMIC-CXR model is ImageNet
    fine-tuned on MIMIC-CXR (first), it is not evaluated on MIMIC-CXR, and DINOv2 is compared
    with ImageNet and with MIMIC per method, fine-tunes on their validation predictions."""
    steps = ["mimic/manifest", "mimic/preprocess", "mimic/imagenet/finetune"]
    for ds in DATASETS:
        steps += [f"{ds}/manifest", f"{ds}/preprocess"]
        inits = [i for i in INITS if not (i == "mimic" and ds == "mimic")]
        steps += [f"{ds}/{i}/{stage}" for i in inits for stage in ("extract", "probe", "finetune")]
        steps += [
            f"{ds}/compare/dinov2/{m}_vs_{other}/{m}"
            for m in ("probe", "finetune")
            for other in ("imagenet", "mimic")
            if other in inits
        ]
    return list(dict.fromkeys(steps))  # mimic's manifest, cache and imagenet fine-tune run once


def test_template_parses_and_dry_run_prints_every_step(tmp_path):
    text = _template()
    raw = tomllib.loads(text)
    assert [d["name"] for d in raw["datasets"]] == DATASETS
    assert [i["name"] for i in raw["inits"]] == INITS
    assert raw["finetune"]["recipe"] == "study" and raw["preprocess"]["preset"] == "study"
    (tmp_path / "study.toml").write_text(text)
    result = CliRunner().invoke(main, ["study", str(tmp_path / "study.toml"), "--dry-run"])
    # The plan is printed, then every placeholder path to fill in, one line each (exit 2).
    assert result.exit_code == 2, result.output
    keys = re.findall(r"^\[[^]]+\] (\S+)$", result.output, flags=re.M)
    assert keys == _expected_steps()
    placeholders = {d["root"] for d in raw["datasets"]} | {i["weights"] for i in raw["inits"][:2]}
    placeholders.add(str(tmp_path / raw["datasets"][-1]["options"]["column_map"]))
    named = re.findall(r"^  - step .* = '([^']+)': (?:file|folder) not found", result.output, re.M)
    assert sorted(named) == sorted(placeholders)
    lines = re.findall(r"^    (cxrprobe .*)$", result.output, flags=re.M)
    commands = dict(zip(keys, lines, strict=True))
    mimic_run = tmp_path / "study_run" / "mimic" / "imagenet" / "finetune"
    assert f"--init run:{mimic_run}" in commands["vindr/mimic/extract"]
    assert f"--init run:{mimic_run}" in commands["uka/mimic/finetune"]
    finetunes = commands["padchest/compare/dinov2/finetune_vs_mimic/finetune"]
    assert "--validation-a" in finetunes and "val_predictions.json" in finetunes
    probes = commands["padchest/compare/dinov2/probe_vs_mimic/probe"]
    assert "--validation-a" in probes and "predictions.val.json" in probes
    chexpert = commands["chexpert/manifest"]
    for option in ("--findings study-chexpert", "--uncertain zero", "--blank negative"):
        assert option in chexpert


def _rewritten(text: str, roots: dict[str, Path], weights: dict[str, Path]) -> str:
    """The template with the stand-ins' roots, tiny weights and tiny run sizes."""
    for name, root in roots.items():
        text = re.sub(rf'^root = "/data/{name}[^"]*"$', f'root = "{root}"', text, flags=re.M)
    for init, path in weights.items():
        kwargs = json.dumps(ARCHS[init][1]).replace(":", " =").replace('"', "")
        line = f'weights = "/weights/{WEIGHT_FILES[init]}"'
        assert line in text
        text = text.replace(line, f'weights = "{path}"\nmodel_kwargs = {kwargs}')
    replacements = {
        "size = 224": f"size = {SIZE}\nworkers = 1",
        'recipe = "study"': 'recipe = "study"\nepochs = 1\nbatch_size = 8\nworkers = 0',
        "resamples = 1000": "resamples = 200",
        'class_weight = "pos_weight"': 'class_weight = "pos_weight"\ngrid = [0.01, 1.0, 100.0]\nmax_iter = 20',
        'device = "auto"': 'device = "cpu"',
    }
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def _tiny_weights(folder: Path) -> dict[str, Path]:
    paths = {}
    for init, (arch, kwargs) in ARCHS.items():
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=SIZE, **kwargs)
        state = model.state_dict()
        for key in [k for k in state if k.endswith(".gamma")]:  # DINOv2's layer scale starts at
            state[key] = torch.ones_like(state[key])  # 1e-5: a random model would ignore images
        paths[init] = save_state_dict(state, folder / f"{init}.safetensors")
    return paths


def test_template_runs_end_to_end_on_stand_ins(tmp_path):
    roots = write_standins(tmp_path / "data", n=40, seed=1)
    config = tmp_path / "study.toml"
    config.write_text(_rewritten(_template(), roots, _tiny_weights(tmp_path)))
    (tmp_path / "uka_columns.json").write_text(roots["uka_columns"].read_text())
    result = CliRunner().invoke(main, ["study", str(config)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "study_run"

    report = json.loads((run / "report.json").read_text())
    cells = {(c["dataset"], c["init"], c["method"]): c for c in report["cells"]}
    expected = {
        (ds, init, method)
        for ds in DATASETS
        for init in INITS
        for method in ("probe", "finetune")
        if not (init == "mimic" and ds == "mimic")
    }
    assert set(cells) == expected
    for (ds, init, method), cell in cells.items():
        predictions = run / ds / init / method / "predictions.json"
        assert cell["mean_auroc"] == pytest.approx(_mean_auroc(predictions), abs=1e-12)
    assert len(report["comparisons"]) == 4 * 5 + 2
    assert not (run / "mimic" / "mimic").exists()

    # The MIMIC-CXR init is the imagenet fine-tune on MIMIC-CXR, on every other dataset.
    mimic_run = (run / "mimic" / "imagenet" / "finetune").resolve()
    for ds in ("vindr", "uka"):
        provenance = read_predictions(run / ds / "mimic" / "finetune" / "predictions.json")
        assert provenance.provenance["init"] == f"run:{mimic_run}"
    chexpert = read_predictions(run / "chexpert" / "dinov2" / "probe" / "predictions.json")
    assert sorted(chexpert.labels) == sorted(get_finding_set("study-chexpert").findings)
    for ds in ("chexpert", "mimic"):  # the stand-ins' blank and -1 cells are 0, as in the study
        targets = read_predictions(run / ds / "imagenet" / "finetune" / "predictions.json").targets
        assert not np.isnan(targets).any()
    compare = json.loads(
        (run / "vindr" / "compare" / "dinov2-finetune_vs_mimic-finetune.json").read_text()
    )
    assert compare["validation"]["a"]["path"].endswith("mimic/finetune/val_predictions.json")
