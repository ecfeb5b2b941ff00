"""Whether the Hugging Face Hub can be reached, decided once per process before the first download.

huggingface_hub (under `tokenizers.Tokenizer.from_pretrained`, `snapshot_download` and `datasets`) retries
an unreachable Hub for about half a minute, with a warning per try, before its one error. So every
download here first calls `offline_reason`: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, or one TCP
connect to the Hub's host (huggingface.co:443, or HF_ENDPOINT's) that fails within CONNECT_TIMEOUT_S,
means offline; then huggingface_hub and datasets are switched to their offline mode for the rest of the
process, so a download reads the local cache only and fails at once when the files are not there.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import urllib.parse
from typing import Any

from proseco_jax.data.errors import DataError

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 3.0
_TRUE = ("1", "ON", "YES", "TRUE")


def _host() -> tuple[str, int]:
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@functools.cache
def _probe() -> str | None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in _TRUE:
            return f"{name}={os.environ[name]}"
    host, port = _host()
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"{host}:{port} is unreachable ({e.strerror or type(e).__name__})"
    return None


def offline_reason() -> str | None:
    """None when the Hub can be reached; else why not, with huggingface_hub (and datasets, if imported)
    put in offline mode, so that downloads read their cache only. The network is probed once a process."""
    reason = _probe()
    if reason is not None:
        # Each library reads its offline flag from these module attributes at call time.
        try:
            from huggingface_hub import constants  # Optional dependency: imported only when needed.

            constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
        datasets_config = sys.modules.get("datasets.config")
        if datasets_config is not None:
            datasets_config.HF_HUB_OFFLINE = True
    return reason


def failure(error: BaseException) -> str:
    """Why a download failed, on one line: offline and missing from the local cache, or the library's own
    error."""
    reason = _probe()
    if reason is not None:
        return f"offline: {reason}, and the local Hugging Face cache lacks it ({type(error).__name__})"
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def datasets_library(corpus: str, local: str) -> Any:
    """The `datasets` library; DataError in one line when it is not installed. `corpus` names what is being
    read and `local` the files to give instead, for the message."""
    try:
        import datasets as hf_datasets  # Optional dependency: only hub corpora need it.
    except ImportError:
        raise DataError(f"data.files is empty, so {corpus} is loaded with the `datasets` library, which is "
                        f"not installed: pip install datasets, or set data.files to {local}") from None
    return hf_datasets


def load_dataset(name: str, default_split: str, corpus: str, local: str) -> Any:
    """One split of the Hugging Face dataset `name` ('org/name' or 'org/name:split') through the `datasets`
    library, online or from its cache; DataError in one line when the library is missing or the dataset
    cannot be loaded (`corpus`, `local`: as for `datasets_library`)."""
    library = datasets_library(corpus, local)
    repo, _, split = name.partition(":")
    offline_reason()  # Offline: the datasets cache only, at once, instead of retries.
    try:
        return library.load_dataset(repo, split=split or default_split)
    except Exception as e:  # noqa: BLE001 - offline, unknown dataset, hub errors: all mean "give local files".
        raise DataError(f"cannot load {name} ({failure(e)}); set data.files to {local}") from None
