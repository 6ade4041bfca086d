"""Full fine-tuning: a backbone plus a linear head trained end to end on an image source.

:mod:`~cxrprobe.finetune.recipe` holds the settings and the entry point, :mod:`~.run` one run
folder from start (or a checkpoint) to the test predictions, :mod:`~.trainer` the engine;
:mod:`~.schedule`, :mod:`~.checkpoint`, :mod:`~.distributed`, :mod:`~.augment`, :mod:`~.loss` and
:mod:`~.outputs` its parts. Images come from :mod:`cxrprobe.cache.source`, targets from
:mod:`cxrprobe.data.targets`; nothing here depends on the frozen-embedding probes.
"""

from cxrprobe.finetune.outputs import format_summary
from cxrprobe.finetune.recipe import FinetuneConfig, finetune
from cxrprobe.finetune.run import FinetuneResult

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "format_summary"]
