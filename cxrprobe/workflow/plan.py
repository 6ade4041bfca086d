"""Turn a study config into ordered steps, and run them, skipping what is already finished.

Each step calls the same library function as its single command (``manifest``, ``preprocess``,
``extract``, ``probe``, ``finetune``, ``compare``) and writes to a fixed place under the study's
``out`` folder. A finished step leaves a record (``.steps/<step>.json``) holding the settings it
ran with; a later run skips it when the settings are the same and refuses, naming the step, when
they changed (delete the step's output and record to redo it). Interrupted stores and fine-tunes
resume through their own resume logic.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError
from cxrprobe.provenance import atomic_write_json, now_utc, to_jsonable
from cxrprobe.workflow.config import DatasetEntry, InitEntry, StudyConfig

Progress = Callable[[int | None, str], Any] | None  # (total, desc) -> a tqdm-like bar


@dataclass
class Step:
    """One unit of the study: a stage for one dataset (and init), with its output and settings."""

    key: str
    stage: str
    output: Path
    settings: dict[str, Any]
    command: str
    action: Callable[[Progress], dict[str, Any]] = field(repr=False)


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, under the study's ``out`` folder."""

    out: Path

    def manifest(self, ds: str) -> Path:
        return self.out / ds / "manifest.parquet"

    def images(self, ds: str, size: int) -> Path:
        return self.out / ds / f"images_{size}.zarr"

    def embeddings(self, ds: str, init: str) -> Path:
        return self.out / ds / init / "embeddings.zarr"

    def predictions(self, ds: str, init: str, method: str) -> Path:
        folder = self.out / ds / init / method
        return folder / "predictions.json"

    def comparison(self, ds: str, a: str, b: str) -> Path:
        return self.out / ds / "compare" / f"{b.replace('/', '-')}_vs_{a.replace('/', '-')}.json"

    def record(self, key: str) -> Path:
        return self.out / ".steps" / (key.replace("/", "__") + ".json")


def _cmd(*parts: Any) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts if p is not None and p != "")


def _opts(options: dict[str, Any]) -> list[str]:
    """Library options as CLI flags (``val_frac=0.1`` → ``--val-frac 0.1``; True → a bare flag)."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (False, None):
            flags += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


def _model_flags(init: InitEntry) -> list[str]:
    return _opts(
        {"weights": init.weights, "arch": init.arch, "model_kwargs": init.model_kwargs or None}
    )


def build_plan(config: StudyConfig) -> list[Step]:
    """Every step of the study in a runnable order (each after the steps it reads)."""
    paths = Paths(config.out)
    steps: list[Step] = []
    for ds in config.datasets:
        steps += _dataset_steps(config, paths, ds)
    return steps


def _size(config: StudyConfig) -> int:
    return int(config.preprocess.get("size", 224))


def _dataset_steps(config: StudyConfig, paths: Paths, ds: DatasetEntry) -> list[Step]:
    manifest, images = paths.manifest(ds.name), paths.images(ds.name, _size(config))
    steps = [_manifest_step(ds, manifest), _preprocess_step(config, ds, manifest, images)]
    predictions: dict[str, Path] = {}
    for init in config.inits:
        methods = config.methods_of(init)
        if "probe" in methods:
            emb = paths.embeddings(ds.name, init.name)
            pred = paths.predictions(ds.name, init.name, "probe")
            steps += [
                _extract_step(config, ds, init, images, emb),
                _probe_step(config, ds, init, emb, pred),
            ]
            predictions[f"{init.name}/probe"] = pred
        if "finetune" in methods:
            pred = paths.predictions(ds.name, init.name, "finetune")
            steps.append(_finetune_step(config, ds, init, images, pred))
            predictions[f"{init.name}/finetune"] = pred
    for a, b in comparisons(config):
        steps.append(_compare_step(config, ds, a, b, predictions, paths.comparison(ds.name, a, b)))
    return steps


def comparisons(config: StudyConfig) -> list[tuple[str, str]]:
    """(A, B) cells compared on every dataset: per method, each init against the reference; then,
    for every init run both ways, its fine-tune against its probe. Cells not run are left out."""
    ref = config.reference_init
    pairs = [
        (f"{ref.name}/{m}", f"{i.name}/{m}")
        for m in config.methods
        for i in config.inits
        if i.name != ref.name and m in config.methods_of(i) and m in config.methods_of(ref)
    ]
    pairs += [
        (f"{i.name}/probe", f"{i.name}/finetune")
        for i in config.inits
        if set(config.methods_of(i)) == {"probe", "finetune"}
    ]
    return pairs


def _manifest_step(ds: DatasetEntry, out: Path) -> Step:
    def action(progress: Progress) -> dict[str, Any]:
        from cxrprobe.data.adapters import get_adapter
        from cxrprobe.data.manifest import manifest_hash, write_manifest

        df = get_adapter(ds.adapter).build(ds.root, **dict(ds.options))
        write_manifest(df, out)
        return {
            "rows": len(df),
            "patients": int(df["patient_id"].nunique()),
            "manifest_hash": manifest_hash(df),
        }

    settings = {"adapter": ds.adapter, "root": ds.root, "options": ds.options}
    command = _cmd(
        "cxrprobe", "manifest", ds.adapter, "--root", ds.root, "-o", out, *_opts(ds.options)
    )
    return Step(f"{ds.name}/manifest", "manifest", out, settings, command, action)


def _preprocess_config(config: StudyConfig) -> Any:
    from cxrprobe.data.preprocess import PRESETS, PreprocessConfig

    options = dict(config.preprocess)
    preset = PRESETS[options.pop("preset", "default")]
    options.pop("workers", None)
    return PreprocessConfig.from_dict({**preset.to_dict(), **options})


def _preprocess_step(config: StudyConfig, ds: DatasetEntry, manifest: Path, out: Path) -> Step:
    cfg = _preprocess_config(config)
    workers = config.preprocess.get("workers")

    def action(progress: Progress) -> dict[str, Any]:
        from cxrprobe.cache.images import build_image_cache

        kwargs = {"workers": workers} if workers else {}
        return build_image_cache(manifest, ds.root, out, cfg, progress=progress, **kwargs)

    settings = {"manifest": manifest, "root": ds.root, "preprocess": cfg.to_dict()}
    command = _cmd(
        "cxrprobe",
        "preprocess",
        "--manifest",
        manifest,
        "--root",
        ds.root,
        "--out",
        out,
        *_opts({k: v for k, v in config.preprocess.items()}),
    )
    return Step(f"{ds.name}/preprocess", "preprocess", out, settings, command, action)


def _extract_step(
    config: StudyConfig, ds: DatasetEntry, init: InitEntry, images: Path, out: Path
) -> Step:
    options = {"img_size": _size(config), "device": config.device, **config.extract}

    def action(progress: Progress) -> dict[str, Any]:
        from cxrprobe.cache.extract import extract_embeddings

        return extract_embeddings(
            out, images=images, progress=progress, **init.model_args(), **options
        )

    settings = {"images": images, **init.model_args(), **options}
    flags = _opts({("size" if k == "img_size" else k): v for k, v in options.items()})
    command = _cmd(
        "cxrprobe",
        "extract",
        "--init",
        init.init,
        *_model_flags(init),
        "--images",
        images,
        "--out",
        out,
        *flags,
    )
    return Step(f"{ds.name}/{init.name}/extract", "extract", out, settings, command, action)


def _probe_step(
    config: StudyConfig, ds: DatasetEntry, init: InitEntry, store: Path, out: Path
) -> Step:
    options = {"device": config.device, "seed": config.seed, **config.probe}

    def action(progress: Progress) -> dict[str, Any]:
        from cxrprobe.probe.run import ProbeConfig, run_probe

        return run_probe(
            ProbeConfig(store=store, out=out, **_probe_kwargs(options)), progress=progress
        )

    settings = {"store": store, **options}
    command = _cmd("cxrprobe", "probe", "--store", store, "--out", out, *_opts(options))
    return Step(f"{ds.name}/{init.name}/probe", "probe", out, settings, command, action)


def _probe_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """TOML lists → the tuples ``ProbeConfig`` holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _finetune_step(
    config: StudyConfig, ds: DatasetEntry, init: InitEntry, images: Path, pred: Path
) -> Step:
    options = {
        "size": _size(config),
        "device": config.device,
        "seed": config.seed,
        **config.finetune,
    }
    run_dir = pred.parent

    def action(progress: Progress) -> dict[str, Any]:
        from cxrprobe.probe.finetune import FinetuneConfig, finetune
        from cxrprobe.probe.finetune_data import from_cache

        model = init.model_args()
        model["weights"] = None if model["weights"] is None else str(model["weights"])
        result = finetune(
            FinetuneConfig(**model, **options),
            from_cache(images),
            run_dir,
            resume=True,
            progress=progress,
        )
        return result.summary

    settings = {"images": images, **init.model_args(), **options}
    command = _cmd(
        "cxrprobe",
        "finetune",
        "--init",
        init.init,
        *_model_flags(init),
        "--images",
        images,
        "--out",
        run_dir,
        "--resume",
        *_opts(options),
    )
    return Step(f"{ds.name}/{init.name}/finetune", "finetune", pred, settings, command, action)


def _compare_step(
    config: StudyConfig, ds: DatasetEntry, a: str, b: str, predictions: dict[str, Path], out: Path
) -> Step:
    options = {"seed": config.seed, "device": config.device, **config.compare}
    file_a, file_b = predictions[a], predictions[b]

    def action(progress: Progress) -> dict[str, Any]:
        from cxrprobe.stats.render import write_report_outputs
        from cxrprobe.stats.report import BootstrapOptions, compare_files

        report = compare_files(file_a, file_b, BootstrapOptions(**options), progress=progress)
        report["cells"] = {"a": a, "b": b, "dataset": ds.name}
        write_report_outputs(
            report, out=out, markdown=out.with_suffix(".md"), plot=out.with_suffix(".png")
        )
        return {"verdict": report["verdict"], "mean_delta": report["mean"]["delta"]}

    settings = {"a": file_a, "b": file_b, **options}
    command = _cmd(
        "cxrprobe",
        "compare",
        file_a,
        file_b,
        "--out",
        out,
        "--markdown",
        out.with_suffix(".md"),
        "--plot",
        out.with_suffix(".png"),
        *_opts(options),
    )
    return Step(f"{ds.name}/compare/{b}_vs_{a}", "compare", out, settings, command, action)


@dataclass(frozen=True)
class Outcome:
    """What happened to one step in a run: ``ran`` or ``skipped`` (finished earlier)."""

    key: str
    status: str
    output: Path
    result: dict[str, Any]


def step_status(step: Step, paths: Paths) -> str:
    """``done`` (finished with these settings), ``todo``; refuses a step whose settings changed."""
    record = paths.record(step.key)
    if not record.is_file():
        return "todo"
    saved = json.loads(record.read_text())
    if saved["settings"] != to_jsonable(step.settings):
        changed = sorted(
            k
            for k in set(saved["settings"]) | set(to_jsonable(step.settings))
            if saved["settings"].get(k) != to_jsonable(step.settings).get(k)
        )
        raise ConfigError(
            f"step {step.key} already ran with different settings ({', '.join(changed)}); delete "
            f"{step.output} and {record} to redo it, or use another 'out' folder"
        )
    return "done" if step.output.exists() else "todo"


def run_plan(
    steps: Iterable[Step],
    out: Path,
    *,
    progress: Progress = None,
    on_step: Callable[[Step, str], None] | None = None,
) -> list[Outcome]:
    """Run every step that is not finished, in order; ``progress(total, desc)`` makes the bars."""
    paths, outcomes = Paths(out), []
    for step in steps:
        if step_status(step, paths) == "done":
            saved = json.loads(paths.record(step.key).read_text())
            outcomes.append(Outcome(step.key, "skipped", step.output, saved.get("result", {})))
            if on_step:
                on_step(step, "skipped")
            continue
        if on_step:
            on_step(step, "running")
        result = step.action(progress)
        atomic_write_json(
            paths.record(step.key),
            {
                "step": step.key,
                "stage": step.stage,
                "output": step.output,
                "command": step.command,
                "settings": step.settings,
                "result": _summary(result),
                "finished": now_utc(),
            },
        )
        outcomes.append(Outcome(step.key, "ran", step.output, _summary(result)))
    return outcomes


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready part of a step's returned summary (long lists cut to their length)."""
    return {
        k: (len(v) if isinstance(v, list) and len(v) > 20 else v)
        for k, v in to_jsonable(result).items()
    }
