"""The authors' DiT layout and ours, tensor by tensor: one table, read in both directions.

The reference (MDLM's DiT as the ProSeCo authors publish it, `backbone.*` in their Hugging Face model and
in their Lightning `state_dict`) stores PyTorch `nn.Linear` weights as [out, in] and packs q, k, v along
one [3 d] axis ordered (three, heads, head_dim); our Flax DiT keeps kernels as [in, *out] with those axes
apart, and pads the vocabulary axis of the embedding and output layer to a multiple of
`model.vocab_multiple`. Each `Tensor` row says where one reference tensor lives in our parameter tree and
how its axes move; import and export both apply the table, so every key is used exactly once, every shape
is checked, and vocabulary padding is added (zeros) on import and cut off on export. The rotary buffer
`backbone.rotary_emb.inv_freq` is no parameter: it is checked against our frequencies, never mapped. A
classifier-free-guidance model (their config's `cfg=true`, `cfg_num_classes` = n) adds its label table
`backbone.cond_map.embedding_table.weight` [n + 1, cond_dim], our `label_embedding` (model.num_classes = n).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from proseco_jax.errors import UsageError
from proseco_jax.models import dit, layers

PREFIX = "backbone."
INV_FREQ = PREFIX + "rotary_emb.inv_freq"
MLP_RATIO = 4  # Fixed in the reference's DDiTBlock.
# The Hugging Face config fields of the reference's DiT (models/hf/configuration_proseco.py).
HF_FIELDS = ("vocab_size", "model_length", "hidden_dim", "cond_dim", "n_blocks", "n_heads", "dropout",
             "time_conditioning")
LABEL_TABLE = PREFIX + "cond_map.embedding_table.weight"


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """The shape of a reference DiT, in its Hugging Face config's terms (vocab_size includes [MASK])."""

    vocab_size: int
    model_length: int
    hidden_dim: int
    cond_dim: int
    n_blocks: int
    n_heads: int
    dropout: float = 0.1
    time_conditioning: bool = False
    num_classes: int = 0  # Their cfg_num_classes when cfg=true; 0: no label table.

    def __post_init__(self):
        for name in ("vocab_size", "model_length", "hidden_dim", "cond_dim", "n_blocks", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"reference config field {name}={value!r} must be a positive integer")
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"reference config cfg_num_classes={n!r} must be a positive integer")
        if self.vocab_size < 2:
            raise UsageError(f"reference config vocab_size={self.vocab_size} leaves no real token besides "
                             "[MASK]")
        if self.hidden_dim % self.n_heads or (self.hidden_dim // self.n_heads) % 2:
            raise UsageError(f"reference config hidden_dim={self.hidden_dim} does not split into "
                             f"n_heads={self.n_heads} heads of even width")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.n_heads

    @classmethod
    def from_hf(cls, values: Mapping[str, Any], origin: str) -> ReferenceConfig:
        """From the fields of a Hugging Face config.json (`origin` names it in messages)."""
        num_classes = values.get("cfg_num_classes", -1) if values.get("cfg") else 0
        if values.get("cfg") and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                  or num_classes < 1):
            raise UsageError(f"{origin} is a classifier-free-guidance model (cfg=true) with "
                             f"cfg_num_classes={num_classes!r}; expected a positive number of classes")
        missing = [name for name in HF_FIELDS[:6] if name not in values]
        if missing:
            raise UsageError(f"{origin} lacks the field(s) {', '.join(missing)} of an MDLM/ProSeCo DiT "
                             "config")
        kwargs = {name: values[name] for name in HF_FIELDS if name in values}
        kwargs["dropout"] = float(kwargs.get("dropout", 0.1))
        kwargs["time_conditioning"] = bool(kwargs.get("time_conditioning", False))
        return cls(**kwargs, num_classes=num_classes)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config.json of the reference's `Proseco` model."""
        fields = {name: getattr(self, name) for name in HF_FIELDS}
        return {"architectures": ["Proseco"], "model_type": "proseco", **fields,
                "cfg": self.num_classes > 0, "cfg_num_classes": self.num_classes or -1}

    @classmethod
    def from_model(cls, model: dit.DiTConfig, vocab_size: int, length: int) -> ReferenceConfig:
        """Of our DiT section (vocab_size: the model's vocabulary, [MASK] included); UsageError when the
        reference cannot express it."""
        if getattr(model, "name", None) != "dit" or model.mlp_ratio != MLP_RATIO:
            raise UsageError(f"only a DiT with model.mlp_ratio={MLP_RATIO} has the reference's layout, "
                             f"got model.name={model.name!r}, mlp_ratio={getattr(model, 'mlp_ratio', None)}")
        return cls(vocab_size=vocab_size, model_length=length, hidden_dim=model.hidden_size,
                   cond_dim=model.cond_dim, n_blocks=model.num_layers, n_heads=model.num_heads,
                   dropout=model.dropout, time_conditioning=model.time_conditioning,
                   num_classes=model.num_classes)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One reference tensor `key` of shape `shape` = our leaf at `path`.

    Ours is `key`'s transpose (when `transpose`) reshaped to `ours`, then zero-padded on `pad_axis` (the
    vocabulary axis) to the padded vocabulary.
    """

    key: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    ours: tuple[int, ...]
    transpose: bool = False
    pad_axis: int | None = None

    def to_ours(self, value: np.ndarray, padded_vocab: int, order: np.ndarray | None = None) -> np.ndarray:
        """`order` [V]: the reference's vocabulary row of each of ours (None: the same ids)."""
        out = (value.T if self.transpose else value).reshape(self.ours)
        if self.pad_axis is not None:
            if order is not None:
                out = np.take(out, order, axis=self.pad_axis)
            widths = [(0, 0)] * out.ndim
            widths[self.pad_axis] = (0, padded_vocab - out.shape[self.pad_axis])
            out = np.pad(out, widths)
        return out

    def to_reference(self, value: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        if self.pad_axis is not None:
            # Our row r is the reference's row order[r], so the reference's row j is our argsort(order)[j].
            rows = np.arange(self.ours[self.pad_axis]) if order is None else np.argsort(order)
            value = np.take(value, rows, axis=self.pad_axis)
        if self.transpose:
            return np.ascontiguousarray(value.reshape(self.shape[::-1]).T)
        return value.reshape(self.shape)


def _linear(key: str, path: tuple[str, ...], out_shape: tuple[int, ...], in_dim: int, bias: bool,
            pad_axis: int | None = None) -> list[Tensor]:
    """An nn.Linear(in_dim, prod(out_shape)): weight [out, in] = our kernel [in, *out_shape] transposed."""
    out = int(np.prod(out_shape))
    rows = [Tensor(f"{key}.weight", (*path, "kernel"), (out, in_dim), (in_dim, *out_shape), True,
                   None if pad_axis is None else pad_axis + 1)]
    if bias:
        rows.append(Tensor(f"{key}.bias", (*path, "bias"), (out,), out_shape, False, pad_axis))
    return rows


def tensors(ref: ReferenceConfig) -> list[Tensor]:
    """Every parameter of the reference DiT, in the order its module registers them (the order of
    `backbone.parameters()`, hence of the EMA's shadow parameters)."""
    d, c, h, v = ref.hidden_dim, ref.cond_dim, ref.n_heads, ref.vocab_size
    rows = [Tensor(PREFIX + "vocab_embed.embedding", ("embedding",), (v, d), (v, d), pad_axis=0)]
    rows += _linear(PREFIX + "sigma_map.mlp.0", ("time", "fc1"), (c,), dit.TIME_FREQUENCY_DIM, True)
    rows += _linear(PREFIX + "sigma_map.mlp.2", ("time", "fc2"), (c,), c, True)
    if ref.num_classes:
        n = ref.num_classes + 1
        rows.append(Tensor(LABEL_TABLE, ("label_embedding",), (n, c), (n, c)))
    for i in range(ref.n_blocks):
        key, ours = f"{PREFIX}blocks.{i}.", f"block_{i}"
        rows.append(Tensor(key + "norm1.weight", (ours, "norm1", "scale"), (d,), (d,)))
        rows += _linear(key + "attn_qkv", (ours, "qkv"), (3, h, d // h), d, False)
        rows.append(Tensor(key + "attn_out.weight", (ours, "attn_out", "kernel"), (d, d), (h, d // h, d),
                           transpose=True))
        rows.append(Tensor(key + "norm2.weight", (ours, "norm2", "scale"), (d,), (d,)))
        rows += _linear(key + "mlp.0", (ours, "mlp_in"), (MLP_RATIO * d,), d, True)
        rows += _linear(key + "mlp.2", (ours, "mlp_out"), (d,), MLP_RATIO * d, True)
        rows += _linear(key + "adaLN_modulation", (ours, "adaln"), (6, d), c, True)
    rows.append(Tensor(PREFIX + "output_layer.norm_final.weight", ("final_norm", "scale"), (d,), (d,)))
    rows += _linear(PREFIX + "output_layer.linear", ("output",), (v,), d, True, pad_axis=0)
    rows += _linear(PREFIX + "output_layer.adaLN_modulation", ("final_adaln",), (2, d), c, True)
    return rows


def inv_freq(head_dim: int) -> np.ndarray:
    """Our rotary frequencies [head_dim // 2] (those of `layers.rotary_tables`), in float32."""
    return layers.rotary_frequencies(head_dim)


def _problems_line(problems: list[str], origin: str) -> str:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"{origin} is not an MDLM/ProSeCo DiT of its config's shape: {'; '.join(problems[:3])}{more}"


def value_problem(key: str, value: np.ndarray) -> str | None:
    """Why the weight tensor `value` cannot be imported (it is not floating point, or holds NaN or Inf),
    else None: a model must not be accepted here only for sampling to refuse it later."""
    if not jnp.issubdtype(value.dtype, jnp.floating):
        return f"{key} has dtype {value.dtype}, expected a float"
    flat = value.reshape(-1)
    step = 1 << 24  # Counted in slices, so a large tensor needs no tensor-sized mask.
    bad = sum(int(np.count_nonzero(~np.isfinite(flat[i:i + step]))) for i in range(0, flat.size, step))
    return f"{key} holds {bad} non-finite values (NaN or Inf) of {flat.size}" if bad else None


def _check_rotary(value: np.ndarray, ref: ReferenceConfig, origin: str) -> None:
    want = inv_freq(ref.head_dim)
    if value.shape != want.shape:
        raise UsageError(f"{origin}: {INV_FREQ} has shape {list(value.shape)}, expected {list(want.shape)} "
                         f"for heads of width {ref.head_dim} (hidden_dim={ref.hidden_dim}, "
                         f"n_heads={ref.n_heads})")
    if not np.allclose(value.astype(np.float32), want, rtol=1e-5, atol=0.0):
        raise UsageError(f"{origin}: {INV_FREQ} does not hold the rotary frequencies 1 / "
                         f"{layers.ROTARY_BASE:g}^(2i / {ref.head_dim}) that our DiT uses")


def to_params(state: Mapping[str, np.ndarray], ref: ReferenceConfig, padded_vocab: int,
              origin: str, order: np.ndarray | None = None) -> dict[str, Any]:
    """Our nested parameter dict (float32) of a reference state dict; UsageError (one line) naming every
    missing, unexpected or mis-shaped key. `order` [vocab_size]: the reference's id of each of our token
    ids, where the two vocabularies number the same tokens differently (None: they agree)."""
    rows = tensors(ref)
    wanted = {row.key for row in rows}
    if not wanted & state.keys():
        keys = ", ".join(sorted(state)[:3]) or "none"
        raise UsageError(f"{origin} holds no tensor of an MDLM/ProSeCo DiT (its keys: {keys}"
                         f"{', ...' if len(state) > 3 else ''}): another architecture")
    problems = [f"missing key {row.key}" for row in rows if row.key not in state]
    problems += [f"unexpected key {key}" for key in state if key not in wanted and key != INV_FREQ]
    problems += [f"{row.key} has shape {list(np.shape(state[row.key]))}, expected {list(row.shape)}"
                 for row in rows if row.key in state and tuple(np.shape(state[row.key])) != row.shape]
    if not problems:
        problems = [p for row in rows if (p := value_problem(row.key, np.asarray(state[row.key])))]
    if problems:
        raise UsageError(_problems_line(problems, origin))
    if INV_FREQ in state:
        _check_rotary(np.asarray(state[INV_FREQ]), ref, origin)
    params: dict[str, Any] = {}
    for row in rows:
        node = params
        for name in row.path[:-1]:
            node = node.setdefault(name, {})
        node[row.path[-1]] = row.to_ours(np.asarray(state[row.key], np.float32), padded_vocab, order)
    return params


def from_params(params: Mapping[str, Any], ref: ReferenceConfig,
                order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The reference state dict (float32, vocabulary padding cut off, rotary buffer included) of our
    parameters; every leaf of `params` must be used exactly once. `order`: as for `to_params`."""
    flat = _flatten(params)
    rows = tensors(ref)
    used = {row.path for row in rows}
    problems = [f"missing parameter {'/'.join(row.path)}" for row in rows if row.path not in flat]
    problems += [f"parameter {'/'.join(path)} has no reference counterpart"
                 for path in flat if path not in used]
    if problems:
        raise UsageError(_problems_line(problems, "the workdir's parameters"))
    state = {row.key: row.to_reference(np.asarray(flat[row.path], np.float32), order) for row in rows}
    state[INV_FREQ] = inv_freq(ref.head_dim)
    return state


def check_tree(params: Mapping[str, Any], abstract: Mapping[str, Any]) -> None:
    """Raises if `params` (converted) and the model's `abstract` tree differ in paths or shapes: the table
    above and models/dit.py are out of step, a bug of ours rather than bad input."""
    have, want = _flatten(params), _flatten(abstract)
    differ = sorted({"/".join(p) for p in have.keys() ^ want.keys()}
                    | {"/".join(p) for p in have.keys() & want.keys() if have[p].shape != want[p].shape})
    if differ:
        raise AssertionError(f"the interop layout does not match the DiT's parameters at {differ[:5]}")


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, name)))
        else:
            out[(*prefix, name)] = value
    return out
