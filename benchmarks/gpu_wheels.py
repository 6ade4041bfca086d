"""Fetch, here, the wheels a bare GPU machine lacks, so the GPU suite runs there with no network.

The lent GPU machines (``nvidia-h200``: Python 3.12 with PyTorch, timm, h5py, scikit-learn, pandas,
xarray, ... preinstalled) reach no package index, and lack a few of cxrprobe's requirements. This
downloads those wheels for the machine's Python into ``.whl/`` (ignored by git), pinned to the
versions installed here, the ones the tests ran with. ``benchmarks/gpu_run.sh`` installs them
there before running ``benchmarks/gpu_suite.py``; the suite's environment check names anything
still missing. cuML is not among them: its wheels (hundreds of MB) exceed what a call carries,
so the suite's probe steps state that cuML was absent.

    python benchmarks/gpu_wheels.py                       # here, where pip reaches the registry
    # then, on the GPU machine (the device tool's run, carrying .whl):
    bash benchmarks/gpu_run.sh
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Requirements (and what they import) missing from the GPU machine's image (its package list in
# the device tool's KINDS.md, 2026-11-17); click travels too, since the tests need click >= 8.2.
MISSING_THERE = ("zarr", "numcodecs", "donfig", "google-crc32c", "pydicom", "click")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
CARRY_LIMIT = 64 << 20  # what one device call carries, working tree included


def pinned(names: tuple[str, ...]) -> list[str]:
    """``name==version`` of each package as installed here."""
    try:
        return [f"{name}=={importlib.metadata.version(name)}" for name in names]
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit(f"{exc.name} is not installed here: install cxrprobe first") from exc


def download(pins: list[str], dest: Path, python_version: str) -> None:
    """Binary wheels of ``pins`` (no dependencies) for CPython ``python_version`` on x86-64 Linux."""
    dest.mkdir(exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms]
    done = subprocess.run([*command, "-d", str(dest), *pins], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"pip download failed: {tail[0]}")


def ours(dest: Path) -> list[Path]:
    """The wheels in ``dest`` of the packages this script fetches (any version)."""
    names = {name.replace("-", "_").lower() for name in MISSING_THERE}
    found = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    return [w for w in found if w.name.split("-")[0].lower() in names]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="where the wheels go")
    parser.add_argument(
        "--python-version", default="3.12", help="the GPU machine's Python (default 3.12)"
    )
    args = parser.parse_args()
    for wheel in ours(args.dest):  # two versions of one package would stop the install there
        wheel.unlink()
    download(pinned(MISSING_THERE), args.dest, args.python_version)
    wheels = ours(args.dest)
    size = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{size / 2**20:.1f} MiB in {args.dest} (a device call carries at most 64 MiB)")
    if size > CARRY_LIMIT:
        raise SystemExit("too large to carry in one device call")


if __name__ == "__main__":
    main()
