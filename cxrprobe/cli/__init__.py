"""The ``cxrprobe`` command line: one click group; each area's commands live in its own module.

Commands are thin: parse options, call one library function, print a summary. Heavy imports
(torch, timm, zarr) happen inside commands so ``cxrprobe --help`` stays instant. ``-v``/``-vv``
on the group show the library's log messages (info/debug) on stderr.
"""

from __future__ import annotations

import logging
import sys

import click

from cxrprobe import __version__
from cxrprobe.cli import cache, data, finetune, images, probe, stats, study

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each record (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        return None


def configure_logging(verbosity: int) -> None:
    """Show ``cxrprobe`` log records on stderr: warnings only, as ``Warning: ...`` lines like the
    commands' own (0), timestamped info (1) or debug (2+) records.

    Replaces the handler an earlier call installed, so running commands repeatedly in one process
    (tests, notebooks) never duplicates lines.
    """
    logger = logging.getLogger("cxrprobe")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    if verbosity <= 0:
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("Warning: %(message)s"))
        logger.setLevel(logging.NOTSET)
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    logger.addHandler(handler)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cxrprobe")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Show what the library does on stderr: -v progress messages, -vv debugging detail "
    "(give it before the command: cxrprobe -v extract ...).",
)
def main(verbose: int) -> None:
    """Compare pretrained initialisations for chest-radiograph classifiers.

    Typical flow: build a manifest, preprocess images into a cache, extract frozen embeddings per
    initialisation, fit linear probes (or fine-tune), and compare predictions with a paired bootstrap.

    Example:

    \b
        cxrprobe demo --out demo_run
        cxrprobe -v extract --init dinov2 --weights dinov2_vitb14_pretrain.pth --images images.zarr --out emb.zarr
    """
    configure_logging(verbose)


for _module in (data, images, cache, probe, finetune, stats, study):
    for _command in _module.COMMANDS:
        main.add_command(_command)
