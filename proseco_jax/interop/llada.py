"""LLaDA checkpoints in Hugging Face layout, streamed tensor by tensor into our Flax LLaDA and back.

GSAI-ML/LLaDA-8B-Base, GSAI-ML/LLaDA-8B-Instruct and kuleshov-group/proseco-llada-sft are directories of
`config.json` (LLaDA's `ModelConfig` fields: d_model, n_layers, n_heads, ...), `model.safetensors.index.json`
and its shards, holding the `LLaDALlamaBlock` layout of LLaDA's `modeling_llada.py` under
`model.transformer.`: `wte`, `blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj,
up_proj, ff_out}`, `ln_f` and the untied output `ff_out`, PyTorch `nn.Linear` weights [out, in] in
bfloat16. (`ff_proj` is the SwiGLU gate, silu(ff_proj x) * up_proj x. The fused `att_proj` layout of
LLaDA's `sequential` block is in no published checkpoint and is refused.) One table maps each key to one
leaf of our parameters, so every key is used exactly once and every shape is checked before anything is
placed.

Loading never assembles the model on one device, nor on the host: each tensor is read alone
(`safe_open(..., framework="numpy")`) and handed to `jax.make_array_from_callback`, which copies to each
device only the slice of it that the leaf's sharding gives that device. Saving writes the same layout
(shards of at most `max_shard_bytes`, the index, config.json); the host holds one shard at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from proseco_jax.errors import UsageError
from proseco_jax.interop import sources
from proseco_jax.interop.layout import Tensor, value_problem
from proseco_jax.interop.staging import check_new_directory, staged_directory
from proseco_jax.models import llada

PREFIX = "model.transformer."
RELEASED = ("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct", "kuleshov-group/proseco-llada-sft")
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Downloaded with the weights: prompts are tokenised with the checkpoint's own tokenizer and chat template.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# LLaDA's ModelConfig defaults of the fields read here (a config.json field that is absent takes them).
DEFAULTS = dict(d_model=768, n_heads=12, n_kv_heads=None, multi_query_attention=None, n_layers=12,
                mlp_ratio=4, mlp_hidden_size=None, vocab_size=50257, embedding_size=50304,
                mask_token_id=50256, rope_theta=10000.0, rms_norm_eps=1e-5, max_sequence_length=1024)
# The architecture our LLaDA implements, in config.json's terms: each field with LLaDA's default and the
# value(s) we accept.
ARCHITECTURE = {
    "block_type": ("sequential", ("llama",)),
    "activation_type": ("swiglu", ("silu",)),
    "layer_norm_type": ("default", ("rms",)),
    "rope": (False, (True,)),
    "alibi": (False, (False,)),
    "weight_tying": (True, (False,)),
    "include_bias": (False, (False,)),
    "include_qkv_bias": (False, (False, None)),
    "bias_for_layer_norm": (None, (False, None)),
    "layer_norm_with_affine": (True, (True,)),
    "attention_layer_norm": (False, (False,)),
    "input_emb_norm": (False, (False,)),
    "scale_logits": (False, (False,)),
    "block_group_size": (1, (1,)),
}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A LLaDA checkpoint found on disk: its config.json, our model section of it, and the file of each
    tensor (nothing read yet but headers)."""

    origin: str
    hf_config: dict[str, Any]
    model: llada.LLaDAConfig
    files: dict[str, str]  # key -> path of the safetensors file holding it


# --------------------------------------------------------------------------------------------- config


def model_config(values: Mapping[str, Any], origin: str) -> llada.LLaDAConfig:
    """Our model section of a LLaDA config.json; UsageError when it is another model or a LLaDA variant
    our model does not implement."""
    if values.get("model_type") != "llada":
        raise UsageError(f"{origin} is not a LLaDA checkpoint: its config has model_type "
                         f"{values.get('model_type')!r}, architectures {values.get('architectures')!r}")
    wrong = [f"{name}={values.get(name, default)!r}" for name, (default, ok) in ARCHITECTURE.items()
             if values.get(name, default) not in ok]
    if values.get("yarn"):
        wrong.append("yarn=True")
    if wrong:
        raise UsageError(f"{origin} is a LLaDA variant our model does not implement ({', '.join(wrong)}); "
                         "it implements the llama block of the published LLaDA-8B checkpoints")
    v = {**DEFAULTS, **{k: values[k] for k in DEFAULTS if values.get(k) is not None}}
    kv_heads = 1 if values.get("multi_query_attention") else (v["n_kv_heads"] or v["n_heads"])
    shape = dict(num_layers=v["n_layers"], hidden_size=v["d_model"], num_heads=v["n_heads"],
                 num_kv_heads=kv_heads, mlp_hidden_size=v["mlp_hidden_size"] or v["mlp_ratio"] * v["d_model"],
                 vocab_size=v["embedding_size"] or v["vocab_size"], mask_token_id=v["mask_token_id"],
                 max_length=v["max_sequence_length"])
    preset = next((name for name, p in llada.PRESETS.items() if p == shape and name != "tiny"), "custom")
    try:
        return llada.LLaDAConfig(preset=preset, rope_theta=float(v["rope_theta"]),
                                 rms_norm_eps=float(v["rms_norm_eps"]), **shape)
    except (UsageError, TypeError, ValueError) as e:
        raise UsageError(f"{origin}: {' '.join(str(e).split())}") from None


def hf_config(model: llada.LLaDAConfig, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """LLaDA's config.json of our model section: `base` (e.g. the config.json it was loaded from, keeping
    its auto_map and token ids) with every shape and architecture field written over."""
    out = dict(base or {"architectures": ["LLaDAModelLM"]})
    out.update({name: ok[0] for name, (_, ok) in ARCHITECTURE.items()})
    out.update(model_type="llada", d_model=model.hidden_size, n_layers=model.num_layers,
               n_heads=model.num_heads, n_kv_heads=model.num_kv_heads, multi_query_attention=None,
               mlp_hidden_size=model.mlp_hidden_size, embedding_size=model.vocab_size,
               vocab_size=model.vocab_size, mask_token_id=model.mask_token_id, rope_theta=model.rope_theta,
               rms_norm_eps=model.rms_norm_eps, max_sequence_length=model.max_length,
               rope_full_precision=True, attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0)
    return out


# --------------------------------------------------------------------------------------------- layout


def tensors(model: llada.LLaDAConfig) -> list[Tensor]:
    """Every tensor of the checkpoint: its key, its shape, and our leaf it is (in registration order)."""
    d, f, v = model.hidden_size, model.mlp_hidden_size, model.vocab_size
    h, kv, hh = model.num_heads, model.num_kv_heads, model.head_dim

    def linear(key, path, out_shape, in_dim):  # nn.Linear weight [out, in] = our kernel [in, *out]^T.
        return Tensor(key + ".weight", (*path, "kernel"), (int(np.prod(out_shape)), in_dim),
                      (in_dim, *out_shape), transpose=True)

    rows = [Tensor(PREFIX + "wte.weight", ("embedding",), (v, d), (v, d))]
    for i in range(model.num_layers):
        key, ours = f"{PREFIX}blocks.{i}.", f"block_{i}"
        rows += [
            Tensor(key + "attn_norm.weight", (ours, "attn_norm", "scale"), (d,), (d,)),
            linear(key + "q_proj", (ours, "q"), (h, hh), d),
            linear(key + "k_proj", (ours, "k"), (kv, hh), d),
            linear(key + "v_proj", (ours, "v"), (kv, hh), d),
            Tensor(key + "attn_out.weight", (ours, "attn_out", "kernel"), (d, h * hh), (h, hh, d),
                   transpose=True),
            Tensor(key + "ff_norm.weight", (ours, "mlp_norm", "scale"), (d,), (d,)),
            linear(key + "ff_proj", (ours, "gate"), (f,), d),
            linear(key + "up_proj", (ours, "up"), (f,), d),
            linear(key + "ff_out", (ours, "mlp_out"), (d,), f),
        ]
    rows.append(Tensor(PREFIX + "ln_f.weight", ("final_norm", "scale"), (d,), (d,)))
    rows.append(linear(PREFIX + "ff_out", ("output",), (v,), d))
    return rows


def _problems_line(problems: list[str], origin: str) -> str:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"{origin} does not hold the LLaDA of its config.json: {'; '.join(problems[:3])}{more}"


def _check_tree(rows: list[Tensor], abstract: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """The flat abstract tree; AssertionError if the table and models/llada.py are out of step (a bug of
    ours, not bad input)."""
    flat = traverse_util.flatten_dict(dict(abstract))
    have = {row.path: row.ours for row in rows}
    differ = sorted("/".join(p) for p in have.keys() ^ flat.keys())
    differ += sorted("/".join(p) for p in have.keys() & flat.keys() if tuple(flat[p].shape) != have[p])
    if differ:
        raise AssertionError(f"the LLaDA interop table does not match the model's parameters at {differ[:5]}")
    return flat


# --------------------------------------------------------------------------------------------- reading


def _safe_open(path: str):
    try:
        from safetensors import safe_open
    except ImportError:
        raise UsageError("reading safetensors needs the safetensors package (pip install "
                         "'proseco_jax[convert]')") from None
    try:
        return safe_open(path, framework="numpy")
    except Exception as e:  # noqa: BLE001 - truncated, foreign or unreadable: all bad input.
        raise UsageError(f"{path} is not a readable safetensors file: {' '.join(str(e).split())[:200]}"
                         ) from None


def _weight_files(directory: str) -> dict[str, str]:
    """key -> safetensors file, from the index (every shard it names must exist) or the single file."""
    index_path = os.path.join(directory, sources.SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        weight_map = sources.read_json(index_path)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise UsageError(f"{index_path} has no weight_map of tensor names to shard files")
        missing = sorted({name for name in weight_map.values()
                          if not os.path.isfile(os.path.join(directory, name))})
        if missing:
            held = sum(name == missing[0] for name in weight_map.values())
            raise UsageError(f"{directory} lacks the shard {missing[0]} that its {sources.SAFETENSORS_INDEX} "
                             f"lists for {held} tensors" + (f" ({len(missing)} shards missing)"
                                                           if len(missing) > 1 else ""))
        return {key: os.path.join(directory, name) for key, name in weight_map.items()}
    single = os.path.join(directory, sources.SAFETENSORS)
    if os.path.isfile(single):
        with _safe_open(single) as f:
            return dict.fromkeys(f.keys(), single)
    raise UsageError(f"{directory} has neither {sources.SAFETENSORS_INDEX} nor {sources.SAFETENSORS}")


def is_llada(source: str) -> bool:
    """Whether `source` names a LLaDA checkpoint: a model directory whose config.json says model_type
    'llada', or a Hub repo id of one (the released ones, or any id naming LLaDA)."""
    if os.path.isdir(source):
        try:
            values = sources.read_json(os.path.join(source, sources.HF_CONFIG))
        except UsageError:
            return False
        return isinstance(values, dict) and values.get("model_type") == "llada"
    return bool(_REPO_ID.match(source)) and (source in RELEASED or "llada" in source.lower())


def open_checkpoint(source: str) -> Checkpoint:
    """The LLaDA checkpoint at `source`: a local model directory, or a Hugging Face repo id (such as
    GSAI-ML/LLaDA-8B-Instruct) downloaded first; reads config.json and the index, no tensor."""
    if os.path.isdir(source):
        directory = source
    elif _REPO_ID.match(source):
        directory = sources.download(source, TOKENIZER_FILES)
    else:
        raise UsageError(f"{source} is neither a model directory nor a Hugging Face repo id such as "
                         f"{RELEASED[1]}")
    config_path = os.path.join(directory, sources.HF_CONFIG)
    if not os.path.isfile(config_path):
        raise UsageError(f"{source} is not a Hugging Face model directory: it has no {sources.HF_CONFIG}")
    values = sources.read_json(config_path)
    if not isinstance(values, dict):
        raise UsageError(f"{config_path} is not a JSON object")
    return Checkpoint(origin=source, hf_config=values, model=model_config(values, source),
                      files=_weight_files(directory))


def _by_file(ckpt: Checkpoint, rows: list[Tensor]) -> dict[str, list[Tensor]]:
    """The rows of the checkpoint's tensors, grouped by the file holding them (each file opened once)."""
    by_file: dict[str, list[Tensor]] = {}
    for row in rows:
        if row.key in ckpt.files:
            by_file.setdefault(ckpt.files[row.key], []).append(row)
    return by_file


def _check_headers(ckpt: Checkpoint, rows: list[Tensor]) -> None:
    """One UsageError line naming every missing, unexpected, mis-shaped or non-float tensor, from the
    files' headers alone."""
    wanted = {row.key for row in rows}
    if not wanted & ckpt.files.keys():
        keys = ", ".join(sorted(ckpt.files)[:3]) or "none"
        raise UsageError(f"{ckpt.origin} holds no tensor of a LLaDA model (its keys: {keys}"
                         f"{', ...' if len(ckpt.files) > 3 else ''}): another architecture")
    problems = [f"missing key {row.key}" for row in rows if row.key not in ckpt.files]
    problems += [f"unexpected key {key}" for key in ckpt.files if key not in wanted]
    for path, file_rows in _by_file(ckpt, rows).items():
        with _safe_open(path) as f:
            present = set(f.keys())
            for row in file_rows:
                if row.key not in present:
                    problems.append(f"{row.key} is not in {os.path.basename(path)}, where the index puts it")
                    continue
                sl = f.get_slice(row.key)
                if tuple(sl.get_shape()) != row.shape:
                    problems.append(f"{row.key} has shape {list(sl.get_shape())}, expected {list(row.shape)}")
                elif sl.get_dtype() not in FLOAT_DTYPES:
                    problems.append(f"{row.key} has dtype {sl.get_dtype()}, expected a float")
    if problems:
        raise UsageError(_problems_line(problems, ckpt.origin))


def load(ckpt: Checkpoint, abstract: Mapping[str, Any]) -> dict[str, Any]:
    """Our parameters from `ckpt`, each leaf created in the sharding (and dtype) of its ShapeDtypeStruct in
    `abstract` (e.g. `ModelOnMesh.abstract_params()` of a config with `model = ckpt.model`).

    Tensors are read one at a time; a device receives only its shard of each."""
    rows = tensors(ckpt.model)
    flat = _check_tree(rows, abstract)
    _check_headers(ckpt, rows)
    params = {}
    for path, file_rows in _by_file(ckpt, rows).items():
        with _safe_open(path) as f:
            for row in file_rows:
                target = flat[row.path]
                value = f.get_tensor(row.key)
                problem = value_problem(row.key, value)
                if problem:
                    raise UsageError(_problems_line([problem], ckpt.origin))
                ours = row.to_ours(value, 0)  # A view: transposes and reshapes copy nothing.
                # Each device's slice is copied out on its own, so no buffer keeps the whole tensor alive.
                params[row.path] = jax.make_array_from_callback(
                    target.shape, target.sharding, lambda idx, a=ours, t=target: np.array(a[idx], t.dtype))
                del ours, value
    return traverse_util.unflatten_dict(params)


# --------------------------------------------------------------------------------------------- writing


def _host_array(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) global array on this host."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save(directory: str, params: Mapping[str, Any], model: llada.LLaDAConfig, *,
         base_config: Mapping[str, Any] | None = None, dtype: str | None = None,
         max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes `params` to `directory` (new, or empty) as LLaDA's Hugging Face layout: shards
    `model-0000i-of-0000n.safetensors` of at most max_shard_bytes (a larger tensor gets a shard of its
    own), `model.safetensors.index.json` and config.json (`hf_config(model, base_config)`). dtype: that of
    the tensors written (e.g. 'bfloat16' as the published checkpoints; default: the parameters' own).
    Tokenizer and modeling code are not written: copy them from the source model to load it in
    transformers."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise UsageError("writing safetensors needs the safetensors package (pip install "
                         "'proseco_jax[convert]')") from None
    if not model.vocab_size or model.mask_token_id < 0:
        raise UsageError("LLaDA's config.json names its vocabulary and [MASK]: save with model.vocab_size "
                         "(the embedding's rows) and model.mask_token_id (data.vocab_size) set")
    rows = tensors(model)
    flat = _check_tree(rows, params)
    check_new_directory(directory, "output directory")
    shards: list[list[Tensor]] = [[]]
    size = 0
    for row in rows:
        nbytes = int(np.prod(row.shape)) * jnp.dtype(dtype or flat[row.path].dtype).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(row)
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    with staged_directory(directory) if jax.process_index() == 0 else contextlib.nullcontext() as staging:
        for name, shard in zip(names, shards, strict=True):
            # Every process takes part in gathering a multi-process array; process 0 writes.
            values = {row.key: row.to_reference(_host_array(flat[row.path])).astype(
                jnp.dtype(dtype or flat[row.path].dtype)) for row in shard}
            total += sum(v.nbytes for v in values.values())
            weight_map.update(dict.fromkeys(values, name))
            if staging:
                # transformers loads only safetensors files that declare the PyTorch format.
                save_file(values, os.path.join(staging, name), metadata={"format": "pt"})
            del values
        if staging:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            for name, content in ((sources.SAFETENSORS_INDEX, index),
                                  (sources.HF_CONFIG, hf_config(model, base_config))):
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    f.write(json.dumps(content, indent=2) + "\n")
