"""The README is executable: every `cxrprobe` command it shows runs, in order, as written.

The main job (`cxrprobe demo --out demo_run`, default size) runs once; the tour then re-runs each
stage on the demo's data, and the real study's TOML is checked with `--dry-run`. The demo must
find its planted findings: AUROC > 0.8 on cardiomegaly and pleural effusion (checked with
scikit-learn on the written predictions) for the probe or the fine-tune.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cli import main
from cxrprobe.stats.predictions import read_predictions

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def readme_blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def readme_commands() -> list[list[str]]:
    """Every `cxrprobe ...` invocation in the README's bash blocks (also after `&&`), in order."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0] == "cxrprobe":
                    commands.append(words[1:])
    return commands


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Run every README command in a fresh folder; the study TOML is written as study.toml."""
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "study.toml").write_text(readme_blocks("toml")[0])
    outputs, runner, previous = {}, CliRunner(), os.getcwd()
    os.chdir(cwd)
    try:
        for args in readme_commands():
            result = runner.invoke(main, args, catch_exceptions=False)
            # The study TOML's roots and weights are placeholders: its dry run lists them (exit 2).
            expected = 2 if args[0] == "study" and "--dry-run" in args else 0
            assert result.exit_code == expected, f"cxrprobe {shlex.join(args)}\n{result.output}"
            outputs[shlex.join(args)] = result.output
    finally:
        os.chdir(previous)
    return cwd, outputs


@pytest.mark.slow
def test_every_readme_command_runs(readme_run):
    cwd, outputs = readme_run
    assert any(key.startswith("demo ") for key in outputs)
    assert (cwd / "demo_run" / "study" / "report.md").is_file()
    assert (cwd / "tour" / "compare.png").is_file() and (cwd / "tour" / "emb.h5").is_file()
    assert (cwd / "tour" / "finetune" / "predictions.json").is_file()
    evaluated = json.loads((cwd / "tour" / "evaluate.json").read_text())  # manifest sex → --by
    assert [s["field"] for s in evaluated["subgroups"]] == ["sex"]
    assert {g["name"] for g in evaluated["subgroups"][0]["groups"]} == {"F", "M"}
    dry = next(out for key, out in outputs.items() if key.startswith("study "))
    assert dry.count("[to run]") == len(re.findall(r"^\[to run\]", dry, re.M)) > 6 * 3
    assert "cxrprobe extract --init dinov2 --weights /weights/dinov2_vitb14_pretrain.pth" in dry
    missing = re.findall(r"^  - step .* = '(/(?:data|weights)/[^']+)': \w+ not found", dry, re.M)
    assert len(missing) == 6 + 2 and "/data/vindr-cxr" in missing


@pytest.mark.slow
def test_demo_detects_its_planted_findings(readme_run):
    cwd, outputs = readme_run
    study = cwd / "demo_run" / "study" / "synthetic"
    best = {}
    for path in study.glob("*/*/predictions.json"):
        pred = read_predictions(path)
        for finding in ("cardiomegaly", "pleural_effusion"):
            j = pred.labels.index(finding)
            keep = ~np.isnan(pred.targets[:, j])
            score = roc_auc_score(pred.targets[keep, j], pred.scores[keep, j])
            best[finding] = max(best.get(finding, 0.0), score)
    assert best["cardiomegaly"] > 0.8 and best["pleural_effusion"] > 0.8, best
    demo_output = next(out for key, out in outputs.items() if key.startswith("demo "))
    for expected in (
        "Models: tiny randomly initialised ViTs",
        "per finding",
        "Comparisons (B − A)",
        "is better" if "is better" in demo_output else "No significant difference",
        "study report",
    ):
        assert expected in demo_output


def test_readme_shows_every_command_and_the_setup_commands():
    text = README.read_text()
    shown = {args[0] for args in readme_commands()}
    assert shown >= set(main.commands), sorted(set(main.commands) - shown)
    assert "pip install -e '.[test]' && python -m pytest -q" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && python -m pytest -q" in ci


@pytest.mark.slow
def test_readme_python_api_snippet_runs_on_the_demo_store(readme_run):
    import torch

    cwd, _ = readme_run
    (snippet,) = readme_blocks("python")
    store = cwd / "demo_run" / "study" / "synthetic" / "dinov2-tiny" / "embeddings.zarr"
    code = snippet.replace("runs/study/vindr/dinov2/embeddings.zarr", str(store))
    if not torch.cuda.is_available():
        code = code.replace('device="cuda"', 'device="cpu"')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    emb, x, y = namespace["emb"], namespace["x"], namespace["y"]
    assert x.shape == (len(namespace["train"]), 2 * emb.dim) and y.shape[0] == x.shape[0]
    assert namespace["x_gpu"].shape == (len(emb.ids), emb.dim)
