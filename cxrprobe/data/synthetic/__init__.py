"""Synthetic chest radiographs with planted findings, and labelled datasets of them.

The demo and the tests use them where no real data may be shipped. :mod:`.anatomy` draws a
normal chest as a density map, :mod:`.findings` plants findings into it, :mod:`.render` composes
both and exposes a 16-bit film, and :mod:`.generate` plans a seeded dataset of patients and
writes the images and ``labels.csv`` (the manifest's columns, read by the ``generic`` adapter).
"""

from cxrprobe.data.synthetic.generate import (
    DEFAULT_PREVALENCE,
    IMAGE_FORMATS,
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    NO_FINDING,
    SYNTHETIC_FINDINGS,
    SyntheticImage,
    assign_splits,
    encode_image,
    generate_dataset,
    plan_dataset,
    render_radiograph,
)

__all__ = [
    "DEFAULT_PREVALENCE",
    "IMAGE_FORMATS",
    "LABEL_COLUMNS",
    "MANIFEST_COLUMNS",
    "NO_FINDING",
    "SYNTHETIC_FINDINGS",
    "SyntheticImage",
    "assign_splits",
    "encode_image",
    "generate_dataset",
    "plan_dataset",
    "render_radiograph",
]
