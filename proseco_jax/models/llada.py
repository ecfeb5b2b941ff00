"""LLaDA, the masked diffusion LM (Nie et al., arXiv 2502.09992) that ProSeCo fine-tunes: f(z) -> logits.

A LLaMA-style transformer without a causal mask: token embedding -> N blocks of [RMSNorm -> rotary
bidirectional self-attention (multi-head, or grouped-query when num_kv_heads < num_heads) -> residual;
RMSNorm -> SwiGLU MLP, silu(x W_gate) * (x W_up) W_out -> residual] -> RMSNorm -> untied output layer.
No biases, no dropout, and no time conditioning: LLaDA infers the noise level from the masks, so sigma is
accepted (the family contract) and ignored. Rotary embeddings use LLaDA's base (rope_theta = 500000) and
are applied in float32 whatever the compute dtype, as LLaDA's `rope_full_precision`.

The vocabulary: LLaDA's [MASK] (126336 in LLaDA-8B) lies inside its 126464-row tables, with 127 ids above
it (the chat template's special tokens among them). The framework places [MASK] at `config.mask_id =
data.vocab_size` and calls `build(model, data.vocab_size + 1)`; so a LLaDA config sets
`data.vocab_size = model.mask_token_id`, and the model checks that the two agree. Logits come out over all
`model.vocab_size` rows, and the losses and samplers read all of them but [MASK]
(`config_base.Config.output_vocab_size`), so the ids above the mask are predicted too. LLaDA has no label
conditioning: `model.num_classes` must stay 0.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from proseco_jax.configlib import ConfigError, Section, at_least, field, greater_than, one_of
from proseco_jax.models import layers

# Shape presets. `llada_8b` is LLaDA-8B (Base and Instruct, and kuleshov-group/proseco-llada-sft) as its
# published config.json gives it: d_model 4096, n_layers 32, n_heads = n_kv_heads = 32, mlp_hidden_size
# 12288, embedding_size 126464, mask_token_id 126336, rope_theta 500000, rms_norm_eps 1e-5,
# max_sequence_length 4096. `llada_tiny` is the same architecture at test size (with grouped-query
# attention) on the framework's vocabulary.
PRESETS = {
    "llada_tiny": dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, mlp_hidden_size=160,
                       vocab_size=0, mask_token_id=-1, max_length=64),
    "llada_8b": dict(num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32, mlp_hidden_size=12288,
                     vocab_size=126464, mask_token_id=126336, max_length=4096),
}
# The preset every family's default config starts from (config_base.get_config(model_preset="tiny")).
PRESETS["tiny"] = PRESETS["llada_tiny"]
DTYPES = ("float32", "bfloat16")
# With model.vocab_size = 0, the tables are the framework's vocabulary rounded up to this (tensor sharding).
VOCAB_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class LLaDAConfig(Section):
    """The `model` section of the LLaDA family."""

    NAME = "model"
    name: str = field("llada", "Model family (models/registry.py); this section holds LLaDA's fields.",
                      one_of("llada"))
    preset: str = field("tiny", "Size preset the shape fields were filled from (llada_tiny, llada_8b; "
                        "'tiny' is llada_tiny), or 'custom' (e.g. read from a checkpoint's config.json).",
                        one_of(*PRESETS, "custom"))
    num_layers: int = field(2, "Transformer blocks (LLaDA's n_layers).", at_least(1))
    hidden_size: int = field(64, "Residual width d (LLaDA's d_model).", at_least(2))
    num_heads: int = field(4, "Query heads (d must split into heads of even width).", at_least(1))
    num_kv_heads: int = field(2, "Key/value heads (n_kv_heads): num_heads for multi-head attention, fewer "
                              "(dividing num_heads) for grouped-query attention.", at_least(1))
    mlp_hidden_size: int = field(160, "Hidden width of the SwiGLU MLP (mlp_hidden_size).", at_least(1))
    vocab_size: int = field(0, "Rows of the embedding and output tables (LLaDA's embedding_size, [MASK] "
                            "inside); 0: data.vocab_size + 1 rounded up to a multiple of 8.", at_least(0))
    mask_token_id: int = field(-1, "[MASK] id inside the vocabulary (126336 in LLaDA-8B); data.vocab_size "
                               "must equal it. -1: the framework's, data.vocab_size.", at_least(-1))
    rope_theta: float = field(500_000.0, "Base of the rotary frequencies (rope_theta).", greater_than(0))
    rms_norm_eps: float = field(1e-5, "Epsilon of every RMSNorm (rms_norm_eps).", greater_than(0))
    max_length: int = field(64, "Longest sequence accepted (LLaDA's max_sequence_length).", at_least(1))
    dtype: str = field("float32", "Compute dtype of matmuls: 'float32' or 'bfloat16'. Norms, rotary, "
                       "softmax and the residual stream stay fp32.", one_of(*DTYPES))
    param_dtype: str = field("float32", "Storage dtype of parameters.", one_of(*DTYPES))
    remat: bool = field(False, "Rematerialise each block in the backward pass (saves memory, costs "
                        "compute).")
    num_classes: int = field(0, "Label classes for classifier-free guidance: LLaDA has no label table, so "
                             "only 0.", at_least(0))

    def validate(self):
        if self.num_classes:
            raise ConfigError(f"model.num_classes={self.num_classes}: LLaDA has no label conditioning "
                              "(classifier-free guidance needs model.name=dit)")
        layers.check_head_split(self.hidden_size, self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model.num_kv_heads={self.num_kv_heads} must divide "
                              f"model.num_heads={self.num_heads}")
        if self.vocab_size and not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(f"model.mask_token_id={self.mask_token_id} must be an id of the "
                              f"model.vocab_size={self.vocab_size} rows")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def table_rows(self, vocab_size: int) -> int:
        """Rows of the embedding and output tables for the framework's vocabulary of vocab_size ids
        ([MASK] last)."""
        if self.vocab_size:
            return self.vocab_size
        return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    def check_vocabulary(self, vocab_size: int) -> None:
        """ConfigError unless the framework's [MASK] (vocab_size - 1 = data.vocab_size) is ours."""
        mask = vocab_size - 1
        if self.mask_token_id not in (-1, mask):
            raise ConfigError(f"data.vocab_size={mask} must equal model.mask_token_id={self.mask_token_id}: "
                              "the framework's [MASK] id is data.vocab_size")
        if vocab_size > self.table_rows(vocab_size):
            raise ConfigError(f"data.vocab_size={mask} does not fit model.vocab_size={self.vocab_size}")


def forward_flops(cfg: LLaDAConfig, vocab_size: int, length: int) -> float:
    """Matmul FLOPs of one forward pass of one sequence of `length` tokens.

    With d = hidden, F = MLP hidden, H / K = query / key-value heads of width h, V = table rows,
    L = length, N = layers:
        per token: N * [2 * (2 d H h + 2 d K h)   (q and output; k and v)
                        + 2 * 3 d F               (gate, up, down)
                        + 2 * 2 * L * H h]        (scores q k^T and the weighted sum of v)
                   + 2 * d * V                    (output layer)
    The embedding lookup, norms, rotary and softmax are not matmuls and are not counted.
    """
    d, f, n, hh = cfg.hidden_size, cfg.mlp_hidden_size, cfg.num_layers, cfg.head_dim
    qo, kv = cfg.num_heads * hh, cfg.num_kv_heads * hh
    per_token = n * (2 * (2 * d * qo + 2 * d * kv) + 2 * 3 * d * f + 2 * 2 * length * qo)
    per_token += 2 * d * cfg.table_rows(vocab_size)
    return float(length * per_token)


class LLaDABlock(nn.Module):
    """One pre-norm LLaMA block; x [B, L, D] float32."""

    cfg: LLaDAConfig

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d, hh = cfg.hidden_size, cfg.head_dim

        def proj(y, heads, name):  # [B, L, D] -> [B, L, heads, hh]
            return layers.dense((heads, hh), ("embed", "heads", "kv"), dtype=dt, param_dtype=pdt,
                                init="xavier", name=name)(y)

        def rotate(a):  # In float32 (LLaDA's rope_full_precision), back to the compute dtype.
            a = layers.apply_rotary(a, cos, sin)
            return nn.with_logical_constraint(a, ("batch", "length", "act_heads", None))

        # Attention.
        y = layers.LayerNorm(pdt, cfg.rms_norm_eps, center=False, name="attn_norm")(x).astype(dt)
        q, k = rotate(proj(y, cfg.num_heads, "q")), rotate(proj(y, cfg.num_kv_heads, "k"))
        v = nn.with_logical_constraint(proj(y, cfg.num_kv_heads, "v"), ("batch", "length", "act_heads", None))
        out = layers.dense(d, ("heads", "kv", "embed"), dtype=dt, param_dtype=pdt, init="xavier",
                           contract_axes=2, name="attn_out")(layers.attention(q, k, v))
        x = nn.with_logical_constraint(x + out.astype(jnp.float32), ("batch", "length", "act_embed"))

        # SwiGLU MLP.
        y = layers.LayerNorm(pdt, cfg.rms_norm_eps, center=False, name="mlp_norm")(x).astype(dt)
        gate, up = (layers.dense(cfg.mlp_hidden_size, ("embed", "mlp"), dtype=dt, param_dtype=pdt,
                                 init="xavier", out_dtype=jnp.float32, name=name)(y)
                    for name in ("gate", "up"))  # float32 accumulators: SwiGLU in float32, then one cast
        h = nn.with_logical_constraint((nn.silu(gate) * up).astype(dt), ("batch", "length", "act_mlp"))
        y = layers.dense(d, ("mlp", "embed"), dtype=dt, param_dtype=pdt, init="xavier", name="mlp_out")(h)
        return nn.with_logical_constraint(x + y.astype(jnp.float32), ("batch", "length", "act_embed"))


class LLaDA(nn.Module):
    """Denoiser: tokens [B, L] int32, sigma [B] (ignored) -> logits [B, L, table rows] float32.

    vocab_size is the framework's vocabulary, [MASK] last (= data.vocab_size + 1).
    """

    cfg: LLaDAConfig
    vocab_size: int

    @nn.compact
    def __call__(self, tokens: jax.Array, sigma: jax.Array, *, labels: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        del sigma, train  # No time conditioning and no dropout in LLaDA.
        if labels is not None:
            raise ValueError("LLaDA takes no labels (model.num_classes must be 0)")
        cfg = self.cfg
        cfg.check_vocabulary(self.vocab_size)
        pdt, dt = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
        rows = cfg.table_rows(self.vocab_size)
        embed = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.hidden_size**-0.5), ("vocab", "embed")),
            (rows, cfg.hidden_size),
            pdt,
        )
        # FSDP-style: gather the table's width before the lookup, so the rows come out batch-sharded.
        embed = nn.with_logical_constraint(embed, ("vocab", None))
        x = jnp.take(embed, tokens, axis=0).astype(jnp.float32)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        cos, sin = layers.rotary_tables(tokens.shape[1], cfg.head_dim, cfg.rope_theta)

        block_cls = nn.remat(LLaDABlock) if cfg.remat else LLaDABlock
        for i in range(cfg.num_layers):
            x = block_cls(cfg, name=f"block_{i}")(x, cos, sin)

        y = layers.LayerNorm(pdt, cfg.rms_norm_eps, center=False, name="final_norm")(x).astype(dt)
        logits = layers.dense(rows, ("embed", "vocab"), dtype=dt, param_dtype=pdt, init="xavier",
                              name="output")(y)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
