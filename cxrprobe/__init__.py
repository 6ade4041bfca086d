"""cxrprobe: compare pretrained initialisations for chest-radiograph classification.

Subpackages: ``data`` (manifests, adapters, decoding), ``cache`` (image and embedding
stores), ``probe`` (linear/kNN probes, fine-tuning), ``stats`` (AUROC, bootstrap, DeLong, FDR).
"""

__version__ = "0.1.0"
