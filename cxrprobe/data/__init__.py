"""Datasets as manifests: the finding vocabulary, label maps, adapters, policies and image decoding."""
