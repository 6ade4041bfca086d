"""Turn a study config into ordered steps, each one ``cxrprobe`` command.

Each step (:class:`~cxrprobe.workflow.steps.Step`) is one ``cxrprobe`` command (``manifest``,
``preprocess``, ``extract``, ``probe``, ``finetune``, ``compare``) writing to a fixed place under
the study's ``out`` folder. Its command line is written from the study's values through the
command's own click options (the CLI hands its commands to :func:`build_plan`; the workflow never
imports the CLI), parsed back by click, and the step runs the command's library call on those
parsed parameters, so the printed command and the step run the same recipe. A step names the
files it reads (``inputs``, and its input options' values); :mod:`cxrprobe.workflow.state`
records their content with each finished step and decides which steps are done, to run, stale
(an input changed: redone) or refused (settings changed). Interrupted stores and fine-tunes
resume through their own resume logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError
from cxrprobe.finetuned import CHECKPOINT, RUN_PREFIX
from cxrprobe.workflow.cells import COMPARISON_MODES, init_pairs, pretraining_order
from cxrprobe.workflow.commands import MODEL_KEYS, Commands, command_args, parse_args
from cxrprobe.workflow.config import DatasetEntry, InitEntry, StudyConfig
from cxrprobe.workflow.steps import Action, Paths, Progress, Step

CURVE_KEYS = ("train_fraction", "repeats")  # [probe] keys of the curve steps only
VAL_PREDICTIONS = "val_predictions.json"  # a fine-tune's validation split, beside predictions.json


@dataclass(frozen=True)
class _Draft:
    """A step before its command line is written: ``cxrprobe STAGE`` with ``values`` (by option
    name; None: not given); ``inputs``: files it reads that no input option names."""

    key: str
    stage: str
    output: Path
    values: dict[str, Any]
    action: Action
    inputs: tuple[Path, ...] = ()
    where: dict[str, str] = field(default_factory=dict)  # see Step

    def step(self, commands: Commands) -> Step:
        """The step, its command line written and parsed with the stage's click command."""
        values = {k: v for k, v in self.values.items() if v is not None}
        try:
            args = command_args(commands, self.stage, values)
            params = parse_args(commands, self.stage, args)
        except ConfigError as exc:
            raise ConfigError(f"step {self.key}: {exc}") from exc
        step = (self.key, self.stage, self.output, values, args, params, self.action)
        return Step(*step, self.inputs, dict(self.where))


@dataclass(frozen=True)
class Model:
    """An init as the steps use it: its model options and the files they read beyond them (a
    pretrained init is ``--init run:RUN_DIR``, reading the run's best checkpoint), and where
    the study config sets them."""

    entry: InitEntry
    inputs: tuple[Path, ...] = ()
    at: str = ""  # e.g. "init 'dinov2'"

    @property
    def where(self) -> dict[str, str]:
        """The config place of each model option (see ``Step.where``)."""
        return {"init": self.at, **{k: f"{self.at} {k}" for k in MODEL_KEYS if k != "init"}}


def build_plan(config: StudyConfig, commands: Commands) -> list[Step]:
    """Every step of the study in a runnable order (each after the steps it reads): first the
    pretraining runs (with their dataset's manifest and image cache), each after the run it
    starts from, then every dataset's steps. A step two parts of the plan share runs once.
    ``commands`` (stage name → click command, the CLI's) write and parse each step's command."""
    paths = Paths(config.out)
    steps: dict[str, _Draft] = {}
    models = {i.name: Model(i, at=f"init {i.name!r}") for i in config.inits if i.pretrain is None}
    by_name = {i.name: i for i in config.inits}
    for name in pretraining_order({i.name: i.pretrain for i in config.inits}):
        init = by_name[name]
        ds = next(d for d in config.datasets if d.name == init.pretrain.dataset)
        pretrain = _pretraining_step(config, paths, ds, init, models[init.pretrain.source])
        for step in [*_data_steps(config, paths, ds), pretrain]:
            steps.setdefault(step.key, step)
        run = pretrain.output.parent.resolve()
        entry = InitEntry(name, f"{RUN_PREFIX}{run}", methods=init.methods)
        models[name] = Model(entry, (run / CHECKPOINT,), f"init {name!r} (its pretrain run)")
    for ds in config.datasets:
        for step in _dataset_steps(config, paths, ds, models):
            steps.setdefault(step.key, step)
    return [draft.step(commands) for draft in steps.values()]


def _size(config: StudyConfig) -> int:
    return int(config.preprocess.get("size", 224))


def _data_steps(config: StudyConfig, paths: Paths, ds: DatasetEntry) -> list[_Draft]:
    manifest, images = paths.manifest(ds.name), paths.images(ds.name, _size(config))
    return [_manifest_step(ds, manifest), _preprocess_step(config, ds, manifest, images)]


def _dataset_steps(
    config: StudyConfig, paths: Paths, ds: DatasetEntry, models: dict[str, Model]
) -> list[_Draft]:
    from cxrprobe.probe.outputs import output_paths

    images = paths.images(ds.name, _size(config))
    steps = _data_steps(config, paths, ds)
    predictions: dict[str, Path] = {}
    validation: dict[str, Path] = {}  # each cell's validation-split predictions
    for init in config.inits:
        if not config.runs(init, ds.name):
            continue
        model, methods = models[init.name], config.methods_of(init)
        if "probe" in methods:
            emb = paths.embeddings(ds.name, init.name)
            pred = paths.predictions(ds.name, init.name, "probe")
            steps += [
                _extract_step(config, ds, model, images, emb),
                _probe_step(config, ds, init, emb, pred),
            ]
            predictions[f"{init.name}/probe"] = pred
            validation[f"{init.name}/probe"] = output_paths(pred)["validation"]
            if "train_fraction" in config.probe:
                steps.append(_curve_step(config, ds, init, emb, paths.curve(ds.name, init.name)))
        if "finetune" in methods:
            pred = paths.predictions(ds.name, init.name, "finetune")
            steps.append(_finetune_step(config, ds, model, images, pred))
            predictions[f"{init.name}/finetune"] = pred
            validation[f"{init.name}/finetune"] = pred.with_name(VAL_PREDICTIONS)
    for a, b in comparisons(config, ds.name):
        out = paths.comparison(ds.name, a, b)
        steps.append(_compare_step(config, ds, a, b, predictions, validation, out))
    return steps


def comparisons(config: StudyConfig, dataset: str | None = None) -> list[tuple[str, str]]:
    """(A, B) cells compared on ``dataset`` (None: any dataset, exclusions aside): per method,
    the init pairs of ``config.comparisons`` (see :mod:`cxrprobe.workflow.cells`); then, for
    ``"reference"`` and ``"all"``, each init's fine-tune against its probe. Cells not run on the
    dataset are left out."""
    inits = {i.name: i for i in config.inits}

    def runs(name: str, method: str) -> bool:
        init = inits[name]
        return method in config.methods_of(init) and (dataset is None or config.runs(init, dataset))

    pairs = init_pairs(config.comparisons, list(inits), config.reference_init.name)
    cells = [
        (f"{a}/{m}", f"{b}/{m}")
        for m in config.methods
        for a, b in pairs
        if runs(a, m) and runs(b, m)
    ]
    if config.comparisons in COMPARISON_MODES:
        cells += [
            (f"{name}/probe", f"{name}/finetune")
            for name in inits
            if runs(name, "probe") and runs(name, "finetune")
        ]
    return cells


def _manifest_step(ds: DatasetEntry, out: Path) -> _Draft:
    def action(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from cxrprobe.data.adapters import build_manifest
        from cxrprobe.data.manifest import manifest_hash

        dataset, root, path = params.pop("dataset"), params.pop("root"), params.pop("out")
        df, _, _ = build_manifest(dataset, root, path, params)
        return {
            "rows": len(df),
            "patients": int(df["patient_id"].nunique()),
            "manifest_hash": manifest_hash(df),
        }

    values = {"dataset": ds.adapter, "root": ds.root, "out": out, **ds.options}
    at = f"dataset {ds.name!r}"
    where = {"root": f"{at} root", "options": f"{at} options"}
    where |= {"dataset": f"{at} adapter", **{k: f"{at} options {k}" for k in ds.options}}
    return _Draft(f"{ds.name}/manifest", "manifest", out, values, action, where=where)


def _preprocess_step(config: StudyConfig, ds: DatasetEntry, manifest: Path, out: Path) -> _Draft:
    def action(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from cxrprobe.cache.images import build_cache

        return build_cache(params, progress)

    values = {"manifest": manifest, "root": ds.root, "out": out, **config.preprocess}
    where = {"root": f"dataset {ds.name!r} root"}
    return _Draft(f"{ds.name}/preprocess", "preprocess", out, values, action, where=where)


def _extract_step(
    config: StudyConfig, ds: DatasetEntry, model: Model, images: Path, out: Path
) -> _Draft:
    def action(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from cxrprobe.cache.extract import run_extract

        return run_extract(params, progress)

    values = {
        **model.entry.model_args(),
        "images": images,
        "out": out,
        "size": _size(config),
        "device": config.device,
        **config.extract,
    }
    key = f"{ds.name}/{model.entry.name}/extract"
    return _Draft(key, "extract", out, values, action, model.inputs, model.where)


def _probe_step(
    config: StudyConfig, ds: DatasetEntry, init: InitEntry, store: Path, out: Path
) -> _Draft:
    def action(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from cxrprobe.probe.run import ProbeConfig, run_probe

        return run_probe(ProbeConfig(**params), progress=progress)

    values = {
        "store": store,
        "out": out,
        "device": config.device,
        "seed": config.seed,
        **{k: v for k, v in config.probe.items() if k not in CURVE_KEYS},
    }
    return _Draft(f"{ds.name}/{init.name}/probe", "probe", out, values, action)


def _curve_step(
    config: StudyConfig, ds: DatasetEntry, init: InitEntry, store: Path, out: Path
) -> _Draft:
    """The probe refitted on subsets of the training split (``[probe] train_fraction`` and
    ``repeats``): points and ``curve.json`` in ``out``'s folder (:mod:`cxrprobe.probe.curves`)."""
    from cxrprobe.probe.curves import curve_paths

    def action(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from cxrprobe.probe.run import ProbeConfig, run_probe

        return run_probe(ProbeConfig(**params), progress=progress)

    values = {"store": store, "out": out, "device": config.device, "seed": config.seed}
    output = curve_paths(out)["curve"]
    return _Draft(
        f"{ds.name}/{init.name}/curve", "probe", output, {**values, **config.probe}, action
    )


def _finetune_step(
    config: StudyConfig,
    ds: DatasetEntry,
    model: Model,
    images: Path,
    pred: Path,
    key: str | None = None,
    options: dict[str, Any] | None = None,
    options_at: str = "",
) -> _Draft:
    """A fine-tune of ``model`` on ``ds`` into ``pred``'s folder (``options``, set in the config
    at ``options_at``, replace the study's ``[finetune]`` values); the cell ``ds/init/finetune``
    unless ``key`` says otherwise."""

    def action(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from cxrprobe.finetune.recipe import run_finetune

        return run_finetune(params, progress).summary

    values = {
        **model.entry.model_args(),
        "images": images,
        "out": pred.parent,
        "resume": True,
        "size": _size(config),
        "device": config.device,
        "seed": config.seed,
        **config.finetune,
        **(options or {}),
    }
    key = key or f"{ds.name}/{model.entry.name}/finetune"
    where = {**model.where, **{k: f"{options_at} {k}" for k in options or {}}}
    if options:
        where["options"] = f"[finetune] and {options_at}"
    return _Draft(key, "finetune", pred, values, action, model.inputs, where)


def _pretraining_step(
    config: StudyConfig, paths: Paths, ds: DatasetEntry, init: InitEntry, source: Model
) -> _Draft:
    """The fine-tune that makes ``init``: its ``from`` init on its pretraining dataset. With no
    options of its own it is the same command as the ``from`` init's fine-tune cell there, so
    when the study runs that cell it is that cell's run."""
    pretrain = init.pretrain
    images = paths.images(ds.name, _size(config))
    cell = not pretrain.options and (
        "finetune" in config.methods_of(source.entry) and config.runs(source.entry, ds.name)
    )
    if cell:
        pred = paths.predictions(ds.name, source.entry.name, "finetune")
        return _finetune_step(config, ds, source, images, pred)
    pred = paths.pretraining(ds.name, init.name)
    key = f"{ds.name}/_pretrain/{init.name}"
    at = f"init {init.name!r} pretrain options"
    return _finetune_step(config, ds, source, images, pred, key, pretrain.options, at)


def _compare_step(
    config: StudyConfig,
    ds: DatasetEntry,
    a: str,
    b: str,
    predictions: dict[str, Path],
    validation: dict[str, Path],
    out: Path,
) -> _Draft:
    """``cxrprobe compare`` of cells A and B, named by ``--name-a`` / ``--name-b`` so the printed
    command names them as the study does; when both write validation-split predictions
    (probes and fine-tunes do), Youden thresholds are chosen on those, not on the test split."""

    def action(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        import inspect
        from dataclasses import fields

        from cxrprobe.stats.outputs import run_compare
        from cxrprobe.stats.report import BootstrapOptions

        options = BootstrapOptions(**{f.name: params[f.name] for f in fields(BootstrapOptions)})
        accepted = set(inspect.signature(run_compare).parameters) - {"options", "progress"}
        report, _ = run_compare(
            options=options,
            cells={"a": a, "b": b, "dataset": ds.name},
            progress=progress,
            **{k: v for k, v in params.items() if k in accepted},
        )
        delta = report["mean"]["delta"]  # NaN when no label has an AUROC in both
        return {"verdict": report["verdict"], "mean_delta": delta if delta == delta else None}

    both = a in validation and b in validation
    values = {
        "file_a": predictions[a],
        "file_b": predictions[b],
        "name_a": a,
        "name_b": b,
        "validation_a": validation[a] if both else None,
        "validation_b": validation[b] if both else None,
        "out": out,
        "markdown": out.with_suffix(".md"),
        "plot": out.with_suffix(".png"),
        "seed": config.seed,
        "device": config.device,
        **config.compare,
    }
    return _Draft(f"{ds.name}/compare/{b}_vs_{a}", "compare", out, values, action)
