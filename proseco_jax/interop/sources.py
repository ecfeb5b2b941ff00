"""Reading the authors' DiT checkpoints: a Hugging Face model directory, a Hub repo id, a Lightning `.ckpt`.

Every reader returns the same `Source`: the model's shape as a `ReferenceConfig` and its `backbone.*`
tensors as numpy arrays. Safetensors files are read with `safetensors.numpy`; PyTorch pickles
(`pytorch_model.bin`, `.ckpt`) need torch, imported only here. They are unpickled with an allow-list:
tensors and containers are rebuilt, any other object (the tokenizer, omegaconf nodes, callbacks) becomes an
inert placeholder that keeps its pickled state, so a checkpoint runs no code of its own and loads without
the packages that wrote it. A Lightning checkpoint's model settings are read from that state (its
`hyper_parameters.config`); with `ema`, its weights are the EMA shadow parameters, which the reference's
`ExponentialMovingAverage` stores as a list in the order of `backbone.parameters()` followed by the
(parameter-free) noise schedule's. A model directory may hold `vocab.json` ({token: id}), the vocabulary
of a SMILES model (read as the authors' tokenizer reads it: `read_vocabulary`), whose ids differ from ours
(`smiles.SmilesTokenizer.reference_order`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from proseco_jax.data import hub
from proseco_jax.data.smiles import REFERENCE_SPECIALS
from proseco_jax.errors import UsageError
from proseco_jax.interop import layout

HF_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
VOCAB_JSON = "vocab.json"
# The authors' released models.
RELEASED = ("kuleshov-group/proseco-owt", "kuleshov-group/mdlm-owt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A reference DiT read from disk: where from, its shape, and its `backbone.*` tensors."""

    origin: str
    config: layout.ReferenceConfig
    tensors: dict[str, np.ndarray]
    # Its corpus tokens in id order, specials left out, where it came with a vocab.json; else None.
    vocabulary: tuple[str, ...] | None = None


def read(source: str, *, ema: bool = False) -> Source:
    """The DiT at `source`: a Hugging Face model directory, a Lightning .ckpt file, or a Hub repo id
    (downloaded). `ema` takes a Lightning checkpoint's EMA weights instead of its raw ones."""
    if os.path.isdir(source):
        _no_ema(ema, source)
        return read_hf_dir(source)
    if os.path.isfile(source):
        return read_lightning(source, ema=ema)
    if _REPO_ID.match(source):
        _no_ema(ema, source)
        return read_hf_dir(download(source, (VOCAB_JSON,)), origin=source)
    raise UsageError(f"--source {source} is neither a checkpoint file, a model directory nor a Hugging Face "
                     f"repo id such as {RELEASED[0]}")


def _no_ema(ema: bool, source: str) -> None:
    if ema:
        raise UsageError(f"--ema picks the EMA weights of a Lightning .ckpt; the Hugging Face model {source} "
                         "holds one set of weights (drop --ema)")


def download(repo_id: str, extra_patterns: tuple[str, ...] = ()) -> str:
    """The local snapshot of Hub repo `repo_id` (config and weights, and files matching extra_patterns)."""
    try:
        import huggingface_hub
    except ImportError:
        raise UsageError(f"downloading {repo_id} needs huggingface_hub (pip install "
                         "'proseco_jax[convert]'), or pass a local model directory") from None
    hub.offline_reason()  # Offline: the hub cache only, at once, instead of half a minute of retries.
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=[HF_CONFIG, SAFETENSORS, SAFETENSORS_INDEX, "model-*.safetensors",
                                     *extra_patterns])
        if not any(os.path.exists(os.path.join(path, name)) for name in (SAFETENSORS, SAFETENSORS_INDEX)):
            path = huggingface_hub.snapshot_download(repo_id, allow_patterns=[HF_CONFIG, TORCH_BIN])
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated, network: all one line.
        raise UsageError(f"{repo_id} is no local path and cannot be downloaded from the Hugging Face Hub "
                         f"({hub.failure(e)}); check the repo id and the network, or pass a local model "
                         "directory") from None
    return path


def read_json(path: str) -> Any:
    """The JSON value in `path`; a file that is missing or does not parse is a one-line UsageError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {' '.join(str(e).split())[:200]}") from None


def read_hf_dir(directory: str, origin: str | None = None) -> Source:
    """A Hugging Face model directory of the reference (config.json + model.safetensors, its shards, or
    pytorch_model.bin)."""
    origin = origin or directory
    config_path = os.path.join(directory, HF_CONFIG)
    if not os.path.isfile(config_path):
        raise UsageError(f"{directory} is not a Hugging Face model directory: it has no {HF_CONFIG}")
    values = read_json(config_path)
    if not isinstance(values, dict):
        raise UsageError(f"{config_path} is not a JSON object")
    config = layout.ReferenceConfig.from_hf(values, config_path)
    if os.path.isfile(os.path.join(directory, SAFETENSORS)):
        tensors = _read_safetensors([os.path.join(directory, SAFETENSORS)])
    elif os.path.isfile(os.path.join(directory, SAFETENSORS_INDEX)):
        tensors = _read_safetensors(_shards(os.path.join(directory, SAFETENSORS_INDEX)))
    elif os.path.isfile(os.path.join(directory, TORCH_BIN)):
        state = _torch_load(os.path.join(directory, TORCH_BIN))
        if not isinstance(state, Mapping):
            raise UsageError(f"{os.path.join(directory, TORCH_BIN)} holds no state dict")
        tensors = _to_numpy(state, os.path.join(directory, TORCH_BIN))
    else:
        raise UsageError(f"{directory} has no {SAFETENSORS} or {TORCH_BIN}")
    vocab_path = os.path.join(directory, VOCAB_JSON)
    vocabulary = read_vocabulary(vocab_path) if os.path.isfile(vocab_path) else None
    return Source(origin=origin, config=config, tensors=tensors, vocabulary=vocabulary)


def read_vocabulary(path: str) -> tuple[str, ...]:
    """The corpus tokens of the authors' SMILES vocabulary `path` in their id order; UsageError if it is
    neither of the two forms below.

    Their tokenizer's vocab.json (`yairschiff/qm9-tokenizer`) maps the corpus tokens alone to 0..n-1 and
    the tokenizer shifts them past its five specials (token id = 5 + file id); a map that also lists the
    specials at their ids 0..4 (tokens at 5.. then) reads the same."""
    values = read_json(path)
    if not isinstance(values, dict) or not all(isinstance(i, int) for i in values.values()):
        values = {}
    has_specials = any(t in values for t in REFERENCE_SPECIALS)
    ids = sorted(values.values())
    if (not values or ids != list(range(len(ids)))
            or (has_specials and any(values.get(t) != i for t, i in REFERENCE_SPECIALS.items()))):
        raise UsageError(f"{path} is not a SMILES vocabulary {{token: id}}: the corpus tokens at ids 0..n-1 "
                         f"(the authors' tokenizer file), or those after the specials {REFERENCE_SPECIALS}")
    return tuple(t for t in sorted(values, key=values.get) if t not in REFERENCE_SPECIALS)


def _shards(index_path: str) -> list[str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot read {index_path}: {' '.join(str(e).split())[:200]}") from None
    directory = os.path.dirname(index_path)
    return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]


def _read_safetensors(paths: list[str]) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise UsageError("reading safetensors needs the safetensors package (pip install "
                         "'proseco_jax[convert]')") from None
    tensors: dict[str, np.ndarray] = {}
    for path in paths:
        try:
            tensors.update(load_file(path))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: any failure is bad input.
            raise UsageError(f"{path} is not a readable safetensors file: {' '.join(str(e).split())[:200]}"
                             ) from None
    return tensors


# ---------------------------------------------------------------------------------------------------------
# PyTorch pickles, unpickled with an allow-list.


class Opaque(dict):
    """Stands in for any pickled object outside the allow-list; keeps its pickled state (`state`) and any
    items or list entries it was given, and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.__dict__["args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)


def _allowed(module: str, name: str) -> Any | None:
    """The real global for tensor rebuilding and plain containers, else None (a placeholder is used)."""
    import torch

    if module == "collections" and name == "OrderedDict":
        import collections

        return collections.OrderedDict
    if module == "torch._utils" and name.startswith("_rebuild_"):
        return getattr(torch._utils, name, None)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return torch._tensor._rebuild_from_type_v2
    if module == "torch" and (name in ("Size", "Tensor")
                              or isinstance(getattr(torch, name, None), torch.dtype)):
        return getattr(torch, name)
    if module == "torch.nn.parameter" and name == "Parameter":
        return torch.nn.Parameter
    return None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is not None:
            return found
        return type(name, (Opaque,), {"__module__": f"opaque.{module}"})


_SAFE_PICKLE = types.ModuleType("proseco_jax_safe_pickle")
_SAFE_PICKLE.Unpickler = _Unpickler
_SAFE_PICKLE.load = lambda file, **kwargs: _Unpickler(file, **kwargs).load()


def _torch_load(path: str) -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(f"reading {path} needs PyTorch (pip install torch); a model directory with "
                         f"{SAFETENSORS} does not") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_SAFE_PICKLE)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, foreign: all bad input.
        raise UsageError(f"{path} is not a PyTorch checkpoint: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}") from None


def _numpy(value: Any) -> np.ndarray:
    import torch

    return value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()


def _to_numpy(state: Mapping, origin: str) -> dict[str, np.ndarray]:
    import torch

    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UsageError(f"{origin} holds non-tensor entries ({', '.join(bad[:3])}): not a state dict")
    return {str(k): _numpy(v) for k, v in state.items()}


def plain(value: Any) -> Any:
    """Dicts, lists and values of a pickled tree, placeholders resolved: an omegaconf container becomes its
    `_content`, a value node its `_val`, a dict subclass its items."""
    if isinstance(value, Opaque):
        state = value.__dict__.get("state")
        if isinstance(state, dict) and "_content" in state:
            return plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:
            return plain(state["_val"])
        if "items" in value.__dict__:
            return [plain(v) for v in value.__dict__["items"]]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _lightning_config(checkpoint: Mapping, tensors: Mapping[str, np.ndarray], path: str
                      ) -> layout.ReferenceConfig:
    """The model's shape from `hyper_parameters.config` (the reference's Hydra config); the vocabulary,
    which the reference takes from its tokenizer, from the embedding, and the classes of a guided model
    from its label table."""
    hyper = plain(checkpoint.get("hyper_parameters", {}))
    config = hyper.get("config") if isinstance(hyper, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    names = ("hidden_size", "cond_dim", "length", "n_blocks", "n_heads")
    if not isinstance(model, dict) or any(name not in model for name in names):
        raise UsageError(f"{path} has no readable hyper_parameters.config.model ({', '.join(names)}): not a "
                         "checkpoint of the reference's Diffusion module")
    backbone, parameterization = config.get("backbone", "dit"), config.get("parameterization", "subs")
    if backbone != "dit" or parameterization == "ar":
        raise UsageError(f"{path} holds a backbone={backbone!r}, parameterization={parameterization!r} "
                         "model; only the DiT of a diffusion model converts")
    embedding = tensors.get(layout.PREFIX + "vocab_embed.embedding")
    if embedding is None or embedding.ndim != 2:
        raise UsageError(f"{path}: missing key {layout.PREFIX}vocab_embed.embedding (or it is not a matrix)")
    labels = tensors.get(layout.LABEL_TABLE)  # Its rows: the classes and "no label".
    try:
        return layout.ReferenceConfig(
            vocab_size=int(embedding.shape[0]), model_length=int(model["length"]),
            hidden_dim=int(model["hidden_size"]), cond_dim=int(model["cond_dim"]),
            n_blocks=int(model["n_blocks"]), n_heads=int(model["n_heads"]),
            dropout=float(model.get("dropout", 0.1)), time_conditioning=bool(config.get("time_conditioning")),
            num_classes=int(labels.shape[0]) - 1 if labels is not None and labels.ndim == 2 else 0)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: unreadable model settings in hyper_parameters.config.model ({e})"
                         ) from None


def read_lightning(path: str, *, ema: bool = False) -> Source:
    """A Lightning checkpoint of the reference's Diffusion module: its `state_dict` (`backbone.*`), or with
    `ema` its EMA shadow parameters put in the place of the parameters they track."""
    checkpoint = _torch_load(path)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise UsageError(f"{path} is not a Lightning checkpoint: it has no state_dict")
    tensors = _to_numpy(checkpoint["state_dict"], f"{path} state_dict")
    config = _lightning_config(checkpoint, tensors, path)
    if ema:
        tensors = _with_ema(tensors, checkpoint.get("ema"), config, path)
    return Source(origin=path, config=config, tensors=tensors)


def _with_ema(tensors: dict[str, np.ndarray], ema: Any, config: layout.ReferenceConfig, path: str
              ) -> dict[str, np.ndarray]:
    shadow = plain(ema).get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, list):
        raise UsageError(f"{path} has no EMA weights (no ema.shadow_params; trained with training.ema=0?); "
                         "drop --ema")
    keys = [row.key for row in layout.tensors(config)]
    if len(shadow) != len(keys):
        raise UsageError(f"{path}: the EMA holds {len(shadow)} tensors, the DiT of its config has "
                         f"{len(keys)} parameters")
    return {**tensors, **_to_numpy(dict(zip(keys, shadow, strict=True)), f"{path} ema.shadow_params")}
