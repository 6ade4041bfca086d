"""Hub weights: the local file of a timm model's published weights, failing fast offline.

:func:`hub_weights_file` finds the weights in the Hugging Face cache or downloads them. Offline
(``HF_HUB_OFFLINE``, or no route to the hub within :data:`HUB_PROBE_TIMEOUT` seconds) it fails
within seconds, naming the file to download and pass as ``--weights``, instead of the ~47 s
``huggingface_hub`` alone takes to give up.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cxrprobe.errors import WeightsError

HUB_PROBE_TIMEOUT = 5.0  # seconds to reach the hub before giving up (huggingface_hub alone: ~47 s)


def hub_weights_file(pretrained_cfg: Mapping[str, Any], label: str, hint: str) -> Path:
    """The local file of a timm model's hub weights: cached, else downloaded; fails fast offline.

    ``label`` names the ``--init`` and ``hint`` the file to download, for the error message.
    """
    repo = pretrained_cfg.get("hf_hub_id")
    todo = f"download {hint} and pass --weights PATH"
    if not repo:
        raise WeightsError(f"--init {label} has no Hugging Face hub weights; {todo}")
    import huggingface_hub

    filenames = [pretrained_cfg.get("hf_hub_filename") or "model.safetensors", "pytorch_model.bin"]
    for filename in filenames:
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    if _hub_offline():
        raise WeightsError(
            f"--init {label}: no weights given and the Hugging Face hub is offline; {todo}"
        )
    _probe_hub(label, todo)
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filenames[0]))
    except Exception as exc:  # network, auth and missing-file errors all end the same way
        raise WeightsError(
            f"--init {label}: fetching {repo} failed ({type(exc).__name__}); {todo}"
        ) from exc


def _hub_offline() -> bool:
    import huggingface_hub.constants as hub

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(getattr(hub, "HF_HUB_OFFLINE", False))


def _probe_hub(label: str, todo: str) -> None:
    """Connect to the hub host once with a short timeout, so no network fails in seconds."""
    import huggingface_hub.constants as hub

    host = urlparse(hub.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as exc:
        raise WeightsError(f"--init {label}: no network to reach {host} ({exc}); {todo}") from exc
