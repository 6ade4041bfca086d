"""One command for every GPU figure: the ``gpu`` tests and the benchmarks, one table, one JSON file.

Steps (each an existing ``benchmarks/bench_*.py`` script or pytest, run as a subprocess with its
own time limit; the figures are read from the JSON line the script prints):

=================  ==========================================================================
gpu_tests          ``pytest -m gpu`` (every test that needs CUDA)
bootstrap_100k     paired bootstrap AUROC, n = 100k, L = 20, B = 1000        target < 1 s
bootstrap_800k     same, n = 800k, L = 20, B = 10,000                         target < 60 s
extract_eager      ViT-B/14 at 224, bf16, 50,000 cached images: whole run / forward only >= 0.9
extract_compiled   same with ``--compile``
probe_768          linear probe, 800k x 768, 20 findings, 5-value grid, torch backend (< 60 s),
                   and the cuML backend on the same data (validation AUROC gap <= 0.005)
probe_1536         same at 800k x 1536 (``cls+mean``)
finetune           ViT-B/14 at 224, bf16, training images/s in memory and from the cache (>= 800)
=================  ==========================================================================

Before any step, every requirement in ``setup.cfg`` is checked (installed, new enough,
importable); on a GPU the suite stops at once, naming what is missing, rather than spend device
time on steps that would fail. On a machine with no network, carry the missing wheels
(``benchmarks/gpu_wheels.py`` here, ``benchmarks/gpu_run.sh`` there).

cuML: when ``cuml`` is not importable the ``gpu`` extra's requirements are installed first
(``pip install``; not with ``--no-install``); if that fails (e.g. no network) the probe steps run
the torch backend alone and the table says why cuML is missing. The whole suite is sized for
about 8 minutes on one H100/H200; ``--budget`` skips steps that would start after it is spent.

``--cpu-smoke`` runs every step at toy size on the CPU in well under a minute (CI runs it, so the
suite never rots): the ``gpu`` tests are only collected, the compiled extraction runs with
compilation disabled, scikit-learn stands in for cuML, and the benchmark scripts run in this
process (no interpreter start-up per step).

    python benchmarks/gpu_suite.py --out gpu_suite.json
    python benchmarks/gpu_suite.py --cpu-smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TINY_VIT = '{"depth":2,"embed_dim":64,"num_heads":2}'  # no spaces: argument strings are split


@dataclass
class Figure:
    """One row of the table: a value read from the step's JSON at a dotted ``path``."""

    name: str
    path: str
    unit: str = ""
    target: str | None = None  # "< 1", ">= 0.9"

    def met(self, value: float) -> bool | None:
        if self.target is None or not math.isfinite(value):
            return None
        op, bound = self.target.split()
        return value < float(bound) if op == "<" else value >= float(bound)


@dataclass
class Step:
    """A script (or pytest) with its GPU and CPU-smoke arguments and the figures it yields."""

    name: str
    script: str | None  # None: pytest
    gpu_args: list[str]
    smoke_args: list[str]
    figures: list[Figure]
    timeout_s: int = 300
    compiles: bool = False
    workdir: bool = False  # pass --workdir: one folder per script (eager and compiled share)


def steps() -> list[Step]:
    boot_smoke = "--device cpu --n 3000 --labels 3 --baseline-resamples 1 --resamples"
    extract = "--device cuda --n 50000 --size 224"
    extract_smoke = f"--device cpu --n 64 --batch-size 16 --size 56 --cache-size 64 --workers 0 --model-kwargs {TINY_VIT}"
    extract_figures = [
        Figure("whole_run_over_forward", "ratio", "", ">= 0.9"),
        Figure("after_warmup_over_forward", "ratio_after_warmup", ""),
        Figure("end_to_end_images_per_s", "end_to_end.images_per_s", "img/s", ">= 3000"),
        Figure("forward_only_images_per_s", "forward_only_images_per_s", "img/s"),
    ]
    probe = "--device cuda --n 800000 --compare cuml --dim"
    probe_smoke = "--device cpu --n 3000 --findings 3 --grid 0.01,1 --compare sklearn --dim"

    def probe_figures(target: str | None) -> list[Figure]:
        return [
            Figure("torch_total_s", "total_s", "s", target),
            Figure("cuml_s", "cuml_s", "s"),
            Figure("cuml_max_val_auroc_gap", "cuml_max_val_auroc_gap", "", "< 0.005"),
        ]

    def boot_figures(target: str) -> list[Figure]:
        return [
            Figure("bootstrap_s", "bootstrap_s", "s", target),
            Figure("end_to_end_s", "end_to_end_s", "s"),
        ]

    finetune_figures = [
        Figure("memory_images_per_s", "variants.memory.images_per_s", "img/s", ">= 800"),
        Figure("cache_images_per_s", "variants.cache.images_per_s", "img/s"),
    ]
    tests_figures = [
        Figure("passed", "passed", "tests"),
        Figure("failed", "failed", "tests", "< 1"),
    ]
    table = [  # name, script, GPU arguments, smoke arguments, figures, timeout, compiles, workdir
        ("gpu_tests", None, "-m gpu", "-m gpu --collect-only", tests_figures, 300, False, False),
        ("bootstrap_100k", "bench_bootstrap.py", "--device cuda --n 100000 --labels 20 --resamples 1000",
         f"{boot_smoke} 40", boot_figures("< 1"), 120, False, False),
        ("bootstrap_800k", "bench_bootstrap.py", "--device cuda --n 800000 --labels 20 --resamples 10000 --baseline-resamples 1",
         f"{boot_smoke} 80", boot_figures("< 60"), 240, False, False),
        ("extract_eager", "bench_extract.py", extract, extract_smoke, extract_figures, 300, False, True),
        ("extract_compiled", "bench_extract.py", f"{extract} --compile", f"{extract_smoke} --compile",
         extract_figures, 300, True, True),
        ("probe_768", "bench_probe.py", f"{probe} 768", f"{probe_smoke} 16", probe_figures("< 60"), 240, False, False),
        ("probe_1536", "bench_probe.py", f"{probe} 1536", f"{probe_smoke} 32", probe_figures(None), 300, False, False),
        ("finetune", "bench_finetune.py", "--device cuda --variants memory,cache",
         "--tiny --steps 2 --variants memory,cache --num-workers 0", finetune_figures, 300, False, True),
    ]  # fmt: skip
    return [
        Step(name, script, gpu.split(), smoke.split(), figures, timeout, compiles, workdir)
        for name, script, gpu, smoke, figures, timeout, compiles, workdir in table
    ]


# ------------------------------------------------------------------------------- running
def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("the step printed no JSON line")


def _pytest_counts(text: str) -> dict[str, Any]:
    """``passed``/``failed``/... counts from pytest's summary (collected count with --collect-only)."""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", text)}
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    if collected:  # --collect-only: nothing ran, every collected test counts as ready to run
        counts.setdefault("passed", int(collected.group(1)))
    counts.setdefault("passed", 0)
    counts.setdefault("failed", counts.get("error", 0))
    if not counts["passed"] and not counts["failed"] and "no tests ran" not in text:
        raise ValueError("could not read pytest's summary")
    return counts


@contextlib.contextmanager
def _compile_disabled():
    """``torch.compile`` runs the model eagerly (smoke mode: the flag's path, not a compile)."""
    import torch._dynamo

    before = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        yield
    finally:
        torch._dynamo.config.disable = before


def _in_process(script: Path, args: list[str]) -> str:
    """Run a benchmark script's ``__main__`` here and return what it printed."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(script), *args]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    return out.getvalue()


def run_step(step: Step, smoke: bool, work: Path) -> tuple[dict[str, Any], str]:
    """The step's JSON (pytest: its counts) and the command line it ran."""
    args = list(step.smoke_args if smoke else step.gpu_args)
    if step.workdir:
        args += ["--workdir", str(work / Path(step.script).stem)]
    if step.script is None:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "tests"]
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=step.timeout_s
        )
        return _pytest_counts(done.stdout + done.stderr), " ".join(["python", *command[1:]])
    script = HERE / step.script
    shown = " ".join(["python", f"benchmarks/{step.script}", *args])
    if smoke:
        with _compile_disabled() if step.compiles else contextlib.nullcontext():
            return _last_json(_in_process(script, args)), shown
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=step.timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return _last_json(done.stdout), shown


def requirements(section: str = "install_requires") -> list[str]:
    """cxrprobe's requirements (or an extra's, ``section="gpu"``) as written in ``setup.cfg``."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    key = (
        ("options", "install_requires")
        if section == "install_requires"
        else ("options.extras_require", section)
    )
    lines = config.get(*key, fallback="").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL"}  # where the module's name differs


def unmet_requirements() -> list[str]:
    """Each requirement that is missing, too old or too new, or fails to import: one line each."""
    from packaging.requirements import Requirement

    problems = []
    for line in requirements():
        req = Requirement(line)
        try:
            found = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(found, prereleases=True):
            problems.append(f"{req}: {found} installed")
            continue
        module = IMPORT_NAMES.get(req.name.lower(), req.name.lower().replace("-", "_"))
        try:
            importlib.import_module(module)
        except Exception as exc:  # an import error of any kind is what we report
            problems.append(f"{req}: import {module} failed ({type(exc).__name__}: {exc})")
    return problems


def ensure_cuml(install: bool = True) -> str | None:
    """None when cuML imports (installing the ``gpu`` extra's packages first if allowed), else why not."""
    if importlib.util.find_spec("cuml") is not None:
        return None
    wanted = requirements("gpu")
    if not install:
        return f"cuML is not installed ({' '.join(wanted)}) and --no-install was given"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--retries", "1", "--timeout", "20"]
    try:
        done = subprocess.run([*pip, *wanted], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return f"cuML missing; installing the gpu extra ({' '.join(wanted)}) took over 300 s"
    importlib.invalidate_caches()
    if done.returncode != 0 or importlib.util.find_spec("cuml") is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"cuML missing; installing the gpu extra ({' '.join(wanted)}) failed: {tail[0]}"
    return None


def _value(data: dict[str, Any], path: str) -> float:
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return math.nan
        data = data[key]
    try:
        return float(data)
    except (TypeError, ValueError):
        return math.nan


def _rename_compare(data: dict[str, Any], backend: str) -> dict[str, Any]:
    """bench_probe names its comparison after the backend; the table calls that row cuML's."""
    renamed = dict(data)
    for key in (f"{backend}_s", f"{backend}_max_val_auroc_gap"):
        if key in data:
            renamed[key.replace(backend, "cuml", 1)] = data[key]
    return renamed


def device_name(smoke: bool) -> str:
    import platform

    import torch

    if not smoke and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_suite(
    smoke: bool, budget_s: float, only: list[str] | None = None, install: bool = True
) -> dict[str, Any]:
    from cxrprobe.provenance import now_utc, versions

    started = time.perf_counter()
    cuml_note: str | None = None
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    records = []
    try:
        for step in steps():
            if only and step.name not in only:
                continue
            record: dict[str, Any] = {"step": step.name, "status": "ok", "note": ""}
            if not smoke and step.script == "bench_probe.py" and cuml_note is None:
                cuml_note = ensure_cuml(install) or ""
            if cuml_note and step.script == "bench_probe.py":
                step.gpu_args = [a for a in step.gpu_args if a not in ("--compare", "cuml")]
                record["note"] = cuml_note
            if time.perf_counter() - started > budget_s:
                record.update(status="skipped", note=f"suite budget of {budget_s:.0f} s spent")
                data, record["command"] = {}, ""
            else:
                begin = time.perf_counter()
                try:
                    data, record["command"] = run_step(step, smoke, work)
                except Exception as exc:  # one failed step must not hide the others' figures
                    data, record["status"] = {}, "failed"
                    record["note"] = f"{type(exc).__name__}: {exc}"[:600]
                record["seconds"] = round(time.perf_counter() - begin, 2)
            if smoke and step.script == "bench_probe.py":
                data = _rename_compare(data, "sklearn")
                record["note"] = "scikit-learn stands in for cuML on the CPU"
            if smoke and step.compiles:
                record["note"] = (
                    "compilation disabled in smoke mode (the --compile path runs eagerly)"
                )
            record["figures"] = []
            for fig in step.figures:
                value = _value(data, fig.path)
                record["figures"].append(
                    {
                        "name": fig.name,
                        "value": value if math.isfinite(value) else None,
                        "unit": fig.unit,
                        "target": fig.target,
                        "met": None if smoke else fig.met(value),  # targets are GPU targets
                    }
                )
            record["raw"] = data
            records.append(record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "suite": "cxrprobe gpu suite",
        "mode": "cpu-smoke" if smoke else "gpu",
        "date": now_utc(),
        "device": device_name(smoke),
        "versions": {k: v for k, v in versions().items() if k in ("python", "torch", "timm")},
        "total_s": round(time.perf_counter() - started, 1),
        "steps": records,
    }


def table(result: dict[str, Any]) -> list[str]:
    """The suite as a fixed-width text table (one line per figure)."""
    rows = [("step", "figure", "value", "unit", "target", "met", "status")]
    for rec in result["steps"]:
        for fig in rec["figures"]:
            value = "—" if fig["value"] is None else f"{fig['value']:.4g}"
            met = {True: "yes", False: "NO", None: ""}[fig["met"]]
            rows.append(
                (
                    rec["step"],
                    fig["name"],
                    value,
                    fig["unit"],
                    fig["target"] or "",
                    met,
                    rec["status"],
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{result['suite']} — {result['mode']} on {result['device']}, {result['date']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [f"{rec['step']}: {rec['note']}" for rec in result["steps"] if rec["note"]]
    lines.append(f"total {result['total_s']} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step at toy size on CPU")
    parser.add_argument(
        "--budget", type=float, default=480, help="seconds after which remaining steps are skipped"
    )
    parser.add_argument("--only", default=None, help="comma list of step names to run")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never pip-install cuML (a machine with no network)",
    )
    args = parser.parse_args()
    unmet = unmet_requirements()
    if unmet:
        raise SystemExit(
            "cxrprobe's requirements are not met here:\n  " + "\n  ".join(unmet) + "\n"
            "On a machine with no network, run `python benchmarks/gpu_wheels.py` where pip works "
            "and carry .whl/ (docs/benchmarks.md, 'The GPU suite')."
        )
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; run on a GPU machine or use --cpu-smoke")
    from cxrprobe.provenance import atomic_write_json

    only = args.only.split(",") if args.only else None
    result = run_suite(args.cpu_smoke, args.budget, only, install=not args.no_install)
    atomic_write_json(args.out, result)
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
