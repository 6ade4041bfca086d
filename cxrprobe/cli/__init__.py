"""The ``cxrprobe`` command line: one click group; each area's commands live in its own module.

Commands are thin: parse options, call one library function, print a summary. Heavy imports
(torch, timm, zarr) happen inside commands so ``cxrprobe --help`` stays instant.
"""

from __future__ import annotations

import click

from cxrprobe import __version__
from cxrprobe.cli import cache, data, finetune, images, probe, stats, study


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cxrprobe")
def main() -> None:
    """Compare pretrained initialisations for chest-radiograph classifiers.

    Typical flow: build a manifest, preprocess images into a cache, extract frozen embeddings per
    initialisation, fit linear probes (or fine-tune), and compare predictions with a paired bootstrap.

    Example:

        cxrprobe demo --out demo_run
    """


for _module in (data, images, cache, probe, finetune, stats, study):
    for _command in _module.COMMANDS:
        main.add_command(_command)
