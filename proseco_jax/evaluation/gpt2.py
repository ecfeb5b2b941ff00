"""GPT-2 causal language model in Flax Linen, loaded from a local Hugging Face checkpoint directory.

This is the evaluator of generative perplexity (gen-PPL) and the featurizer of MAUVE. One architecture
covers gpt2, gpt2-medium, gpt2-large and gpt2-xl: token plus learned position embeddings, pre-LN blocks
x + attn(ln_1(x)), x + mlp(ln_2(x)) with causal softmax(q k^T / sqrt(d_head)) attention, a final
LayerNorm and an LM head tied to the token embedding. Parameter names mirror the checkpoint's
(`h.3.attn.c_attn.weight` -> `h_3/attn/c_attn/kernel`); the checkpoint's Conv1D weights are stored
[in, out], which is exactly a Dense kernel, so loading needs no transposes. Weights are read with
`safetensors.numpy`; PyTorch is not needed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

_TANH_GELU = functools.partial(jax.nn.gelu, approximate=True)
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": _TANH_GELU,
    "gelu_pytorch_tanh": _TANH_GELU,
    "gelu_fast": _TANH_GELU,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The fields of a Hugging Face GPT-2 `config.json` that the forward pass uses (defaults: gpt2)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    eos_token_id: int | None = 50256

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GPT2Config:
        """Builds a config from a parsed `config.json`; rejects options this model does not implement."""
        model_type = raw.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(f"config model_type is {model_type!r}, expected 'gpt2'")
        unsupported = {
            "scale_attn_weights": (False, raw.get("scale_attn_weights", True)),
            "scale_attn_by_inverse_layer_idx": (True, raw.get("scale_attn_by_inverse_layer_idx", False)),
            "add_cross_attention": (True, raw.get("add_cross_attention", False)),
            "tie_word_embeddings": (False, raw.get("tie_word_embeddings", True)),
        }
        for key, (bad, value) in unsupported.items():
            if value == bad:
                raise ValueError(f"config {key}={value} is not supported by this GPT-2")
        activation = raw.get("activation_function", "gelu_new")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"config activation_function {activation!r} not in {sorted(_ACTIVATIONS)}")
        eos = raw.get("eos_token_id", 50256)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {key: raw[key] for key in fields if key in raw}
        kwargs["eos_token_id"] = eos if isinstance(eos, int) else None
        config = cls(**kwargs)
        if config.n_embd % config.n_head:
            raise ValueError(f"config n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        return config


class _Attention(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
        """x [B, L, D], allowed bool [B, 1, L, L] (query, key) -> [B, L, D]."""
        batch, length, dim = x.shape
        heads = self.config.n_head
        head_dim = dim // heads
        qkv = nn.Dense(3 * dim, dtype=self.dtype, name="c_attn")(x)  # [B, L, 3D]

        def split_heads(t: jax.Array) -> jax.Array:  # [B, L, D] -> [B*H, L, Dh]
            t = t.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)
            return t.reshape(batch * heads, length, head_dim)

        q, k, v = (split_heads(t) for t in jnp.split(qkv, 3, axis=-1))
        scores = jnp.matmul(q, k.transpose(0, 2, 1)) / math.sqrt(head_dim)  # [B*H, L, L]
        scores = scores.reshape(batch, heads, length, length).astype(jnp.float32)
        # A large finite fill (not -inf) keeps fully masked query rows (padding) free of NaN.
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.matmul(probs.reshape(batch * heads, length, length), v)  # [B*H, L, Dh]
        out = out.reshape(batch, heads, length, head_dim).transpose(0, 2, 1, 3).reshape(batch, length, dim)
        return nn.Dense(dim, dtype=self.dtype, name="c_proj")(out)


class _MLP(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, L, D] -> [B, L, D]."""
        width = self.config.n_inner or 4 * self.config.n_embd
        h = nn.Dense(width, dtype=self.dtype, name="c_fc")(x)
        h = _ACTIVATIONS[self.config.activation_function](h)
        return nn.Dense(self.config.n_embd, dtype=self.dtype, name="c_proj")(h)


class _Block(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
        """x [B, L, D], allowed bool [B, 1, L, L] -> [B, L, D]."""
        eps = self.config.layer_norm_epsilon
        x = x + _Attention(self.config, self.dtype, name="attn")(
            nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln_1")(x), allowed
        )
        return x + _MLP(self.config, self.dtype, name="mlp")(
            nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln_2")(x)
        )


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with its tied LM head; `__call__` gives next-token logits or the final hidden states."""

    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        return_hidden: bool = False,
    ) -> jax.Array:
        """input_ids int [B, L], attention_mask [B, L] (1 = real token) -> logits [B, L, V].

        With `return_hidden`, returns the hidden states after the final LayerNorm [B, L, D] instead.
        Masked keys are ignored; outputs at masked query positions are meaningless.
        """
        config = self.config
        length = input_ids.shape[1]
        if length > config.n_positions:
            raise ValueError(f"sequence length {length} exceeds GPT-2 n_positions={config.n_positions}")
        wte = nn.Embed(config.vocab_size, config.n_embd, dtype=self.dtype, name="wte")
        wpe = nn.Embed(config.n_positions, config.n_embd, dtype=self.dtype, name="wpe")
        x = wte(input_ids) + wpe(jnp.arange(length))[None]  # [B, L, D]
        allowed = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]  # [1, 1, L, L]
        if attention_mask is not None:
            allowed = allowed & attention_mask.astype(bool)[:, None, None, :]  # [B, 1, L, L]
        for layer in range(config.n_layer):
            x = _Block(config, self.dtype, name=f"h_{layer}")(x, allowed)
        x = nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=self.dtype, name="ln_f")(x)
        if return_hidden:
            return x
        return wte.attend(x)


def _checkpoint_arrays(directory: str) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or of the shards named by its index) in `directory`."""
    from safetensors.numpy import load_file  # imported here: `safetensors` is an optional extra

    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        arrays: dict[str, np.ndarray] = {}
        for shard in shards:
            arrays.update(load_file(os.path.join(directory, shard)))
        return arrays
    raise FileNotFoundError(f"GPT-2 checkpoint directory {directory} has no model.safetensors")


def _to_flax_params(arrays: dict[str, np.ndarray], config: GPT2Config, dtype: Any) -> Params:
    """Maps checkpoint names (`[transformer.]h.0.mlp.c_fc.weight`, ...) to the Flax parameter tree."""
    leaf_names = {"ln_1": "scale", "ln_2": "scale", "ln_f": "scale", "wte": "embedding", "wpe": "embedding"}
    params: Params = {}
    for name, array in arrays.items():
        name = name.removeprefix("transformer.")
        parts = name.split(".")
        if name == "lm_head.weight" or (parts[-2] == "attn" and parts[-1] in ("bias", "masked_bias")):
            continue  # the tied head, and the causal-mask buffers `h.N.attn.bias` of old checkpoints
        if parts[0] == "h":
            parts = [f"h_{parts[1]}", *parts[2:]]
        owner, leaf = parts[-2], parts[-1]
        if leaf == "weight":
            parts[-1] = leaf_names.get(owner, "kernel")
        node = params
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = jnp.asarray(array, dtype=dtype)
    head = arrays.get("lm_head.weight")
    wte = arrays.get("transformer.wte.weight", arrays.get("wte.weight"))
    if head is not None and wte is not None and not np.array_equal(head, wte):
        raise ValueError("checkpoint's lm_head is not tied to wte, which this GPT-2 does not support")
    return params


def _shapes(tree: Params) -> dict[str, tuple[int, ...]]:
    """{"h_0/attn/c_attn/kernel": shape, ...} of a parameter tree."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"/".join(str(key.key) for key in path): tuple(leaf.shape) for path, leaf in leaves}


def _check_tree(params: Params, expected: Params, directory: str) -> None:
    """Raises ValueError naming the first missing, unexpected or misshapen parameter."""
    got, want = _shapes(params), _shapes(expected)
    for name in sorted(want):
        if name not in got:
            raise ValueError(f"GPT-2 checkpoint in {directory} lacks parameter {name}")
        if got[name] != want[name]:
            raise ValueError(f"GPT-2 parameter {name} has shape {got[name]}, config implies {want[name]}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ValueError(f"GPT-2 checkpoint in {directory} has unexpected parameter {extra[0]}")


def load_gpt2(
    path: str | os.PathLike, dtype: Any = jnp.float32
) -> tuple[GPT2LMHeadModel, Params, GPT2Config]:
    """Loads a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`).

    Returns (module, params, config); call it as `module.apply({"params": params}, ids, mask)`.
    Parameters and computation use `dtype`; attention softmax is always fp32.
    """
    directory = os.fspath(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"GPT-2 checkpoint directory not found: {directory}")
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"GPT-2 checkpoint directory {directory} has no config.json")
    with open(config_path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    config = GPT2Config.from_dict(raw)
    module = GPT2LMHeadModel(config, dtype=dtype)
    params = _to_flax_params(_checkpoint_arrays(directory), config, dtype)
    expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    _check_tree(params, expected, directory)
    return module, params, config


def apply_fn(
    module: GPT2LMHeadModel, return_hidden: bool = False
) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
    """The pure function (params, ids int [B, L], mask [B, L]) -> logits [B, L, V] (or hidden [B, L, D])."""

    def apply(params: Params, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return module.apply({"params": params}, input_ids, attention_mask, return_hidden=return_hidden)

    return apply
