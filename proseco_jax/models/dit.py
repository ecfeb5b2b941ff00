"""The DiT denoiser f_theta(z_t, sigma) -> logits, compatible with MDLM's DiT.

Token embedding -> N blocks of [adaLN-modulated LayerNorm -> rotary bidirectional self-attention -> gated
residual; adaLN-modulated LayerNorm -> GELU MLP -> gated residual] -> adaLN final layer -> logits over the
vocabulary including [MASK]. The adaLN shift/scale/gate come from c = SiLU(MLP(sinusoidal(sigma))); with
time conditioning off, sigma = 0 is fed, so c is a learned constant (as in the paper's runs). A
label-conditioned model (`num_classes` > 0, for classifier-free guidance) adds SiLU(E[label]) to c, E a
table of num_classes + 1 rows whose last row is "no label", as the authors' DiT. All adaLN and output
projections start at zero, so an untrained model predicts the uniform distribution.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from proseco_jax.configlib import Section, at_least, between, field, one_of
from proseco_jax.models import layers

# Size presets: (num_layers, hidden_size, num_heads, cond_dim). `small` is the paper's DiT-small.
PRESETS = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=4, cond_dim=64),
    "small": dict(num_layers=12, hidden_size=768, num_heads=12, cond_dim=128),
    "medium": dict(num_layers=24, hidden_size=1024, num_heads=16, cond_dim=128),
}
# Width of the sinusoidal features of sigma that feed the time-embedding MLP.
TIME_FREQUENCY_DIM = 256
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class DiTConfig(Section):
    """The `model` section of the DiT family: shape and numerics of the denoiser."""

    NAME = "model"
    name: str = field("dit", "Model family (models/registry.py); this section holds the DiT's fields.",
                      one_of("dit"))
    preset: str = field("tiny", "Size preset the four shape fields below were filled from (tiny, small, "
                        "medium).", one_of(*PRESETS))
    num_layers: int = field(2, "DiT blocks.", at_least(1))
    hidden_size: int = field(128, "Residual width d.", at_least(2))
    num_heads: int = field(4, "Attention heads (d must split into heads of even width).", at_least(1))
    cond_dim: int = field(64, "Width of the time embedding feeding adaLN.", at_least(1))
    mlp_ratio: int = field(4, "MLP hidden width = mlp_ratio * d.", at_least(1))
    dropout: float = field(0.0, "Dropout on attention and MLP outputs (MDLM uses 0.1 on OpenWebText).",
                           between(0, 1, open_high=True))
    time_conditioning: bool = field(False, "False feeds sigma = 0 to adaLN, as in the paper's runs.")
    max_length: int = field(64, "Longest sequence the model accepts (data.length is checked against it; "
                            "rotary tables are built at each call's length).", at_least(1))
    vocab_multiple: int = field(8, "Embedding/output tables are padded to a multiple of this (tensor "
                                "sharding).", at_least(1))
    dtype: str = field("float32", "Compute dtype of matmuls: 'float32' or 'bfloat16'. Norms, rotary, GELU "
                       "and softmax stay fp32.", one_of(*DTYPES))
    param_dtype: str = field("float32", "Storage dtype of parameters.", one_of(*DTYPES))
    init: str = field("reference", "Parameter init: 'reference' as the authors' DiT (PyTorch defaults, "
                      "U(+-1/sqrt(fan_in)); embedding U(+-1/sqrt(d)); adaLN and output zero) or 'xavier' "
                      "(Glorot kernels, zero biases, N(0, 1) embedding).", one_of(*layers.INITS))
    remat: bool = field(False, "Rematerialise each block in the backward pass (saves memory, costs "
                        "compute).")
    num_classes: int = field(0, "Label classes for classifier-free guidance (0 = unconditional: no label "
                             "table); the table has one more row, 'no label'.", at_least(0))

    def validate(self):
        layers.check_head_split(self.hidden_size, self.num_heads)

    def padded_vocab_size(self, vocab_size: int) -> int:
        """vocab_size rounded up to a multiple of vocab_multiple."""
        m = self.vocab_multiple
        return -(-vocab_size // m) * m


def forward_flops(cfg: DiTConfig, vocab_size: int, length: int) -> float:
    """Matmul FLOPs of one forward pass of one sequence of `length` tokens.

    With d = hidden, r = mlp_ratio, c = cond_dim, V = padded vocabulary, L = length, N = layers:
        per token:    N * [2 * (4 d^2 + 2 r d^2)   (q, k, v, out; MLP in and out)
                           + 2 * 2 * L * d]        (scores q k^T and the weighted sum of v)
                      + 2 * d * V                  (output layer)
        per sequence: N * 2 * c * 6 d + 2 * c * 2 d (adaLN of the blocks and of the final layer)
                      + 2 * (F c + c^2)            (time embedding MLP, F sinusoidal features)
    The embedding lookup, norms and softmax are not matmuls and are not counted.
    """
    d, r, c, n = cfg.hidden_size, cfg.mlp_ratio, cfg.cond_dim, cfg.num_layers
    vocab = cfg.padded_vocab_size(vocab_size)
    per_token = n * (2 * (4 * d * d + 2 * r * d * d) + 2 * 2 * length * d) + 2 * d * vocab
    per_sequence = n * 2 * c * 6 * d + 2 * c * 2 * d + 2 * (TIME_FREQUENCY_DIM * c + c * c)
    return float(length * per_token + per_sequence)


def adaln_modulation(c: jax.Array, count: int, cfg: DiTConfig, name: str) -> jax.Array:
    """`count` adaLN vectors [B, count, D] (shifts, scales, gates) from the conditioning c [B, cond_dim];
    zero-initialised, so every block starts as the identity. Call inside a compact module."""
    mod = layers.dense((count, cfg.hidden_size), ("cond", None, "embed"), dtype=jnp.float32, init=cfg.init,
                       param_dtype=jnp.dtype(cfg.param_dtype), use_bias=True, zero_init=True, name=name)(c)
    return nn.with_logical_constraint(mod, ("batch", None, "act_embed"))


class TimeEmbedding(nn.Module):
    """sigma [B] -> SiLU(MLP(sinusoidal(sigma))) [B, cond_dim]."""

    cfg: DiTConfig
    frequency_dim: int = TIME_FREQUENCY_DIM

    @nn.compact
    def __call__(self, sigma: jax.Array) -> jax.Array:
        cfg = self.cfg
        pdt = jnp.dtype(cfg.param_dtype)
        h = layers.timestep_embedding(sigma, self.frequency_dim)
        h = layers.dense(cfg.cond_dim, (None, "cond"), dtype=jnp.float32, param_dtype=pdt, init=cfg.init,
                         use_bias=True, name="fc1")(h)
        h = layers.dense(cfg.cond_dim, (None, "cond"), dtype=jnp.float32, param_dtype=pdt, init=cfg.init,
                         use_bias=True, name="fc2")(nn.silu(h))
        return nn.silu(h)


class DiTBlock(nn.Module):
    """One adaLN transformer block; x [B, L, D], c [B, cond_dim]."""

    cfg: DiTConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, c: jax.Array, cos: jax.Array, sin: jax.Array, deterministic: bool
    ) -> jax.Array:
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d, h = cfg.hidden_size, cfg.num_heads
        mod = adaln_modulation(c, 6, cfg, "adaln")
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod[:, i] for i in range(6))

        # Attention.
        y = layers.modulate(layers.LayerNorm(pdt, name="norm1")(x), shift_a, scale_a).astype(dt)
        qkv = layers.dense(
            (3, h, d // h), ("embed", None, "heads", "kv"), dtype=dt, param_dtype=pdt, init=cfg.init,
            name="qkv"
        )(y)
        # A split, not three slices: its gradient is one concatenation, not three padded copies summed.
        q, k, v = (a[:, :, 0] for a in jnp.split(qkv, 3, axis=2))
        q = nn.with_logical_constraint(
            layers.apply_rotary(q, cos, sin), ("batch", "length", "act_heads", None)
        )
        k = nn.with_logical_constraint(
            layers.apply_rotary(k, cos, sin), ("batch", "length", "act_heads", None)
        )
        attn = layers.attention(q, k, v)
        out = layers.dense(
            d, ("heads", "kv", "embed"), dtype=dt, param_dtype=pdt, init=cfg.init, contract_axes=2,
            name="attn_out"
        )(attn)
        out = nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
        x = x + gate_a[:, None, :] * out.astype(jnp.float32)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

        # MLP.
        y = layers.modulate(layers.LayerNorm(pdt, name="norm2")(x), shift_m, scale_m).astype(dt)
        y = layers.dense(
            cfg.mlp_ratio * d, ("embed", "mlp"), dtype=dt, param_dtype=pdt, init=cfg.init, use_bias=True,
            out_dtype=jnp.float32, name="mlp_in"
        )(y)
        y = nn.gelu(y, approximate=True).astype(dt)  # on the float32 accumulator, then one cast
        y = nn.with_logical_constraint(y, ("batch", "length", "act_mlp"))
        y = layers.dense(d, ("mlp", "embed"), dtype=dt, param_dtype=pdt, init=cfg.init, use_bias=True,
                         name="mlp_out")(y)
        y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
        x = x + gate_m[:, None, :] * y.astype(jnp.float32)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class DiT(nn.Module):
    """Denoiser: tokens [B, L] int32, sigma [B], labels [B] int32 | None -> logits [B, L, vocab_size] float32.

    vocab_size is the model's vocabulary, [MASK] included. labels in [0, num_classes], num_classes being
    "no label" (what None stands for); a model with num_classes = 0 takes no labels.
    """

    cfg: DiTConfig
    vocab_size: int

    @nn.compact
    def __call__(self, tokens: jax.Array, sigma: jax.Array, *, labels: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        cfg = self.cfg
        pdt = jnp.dtype(cfg.param_dtype)
        length = tokens.shape[1]
        if not cfg.time_conditioning:  # As the reference: the model only ever sees sigma = 0.
            sigma = jnp.zeros_like(sigma)
        embedding_init = (layers.uniform(cfg.hidden_size**-0.5) if cfg.init == "reference"
                          else nn.initializers.normal(1.0))
        embed = self.param(
            "embedding",
            nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
            (cfg.padded_vocab_size(self.vocab_size), cfg.hidden_size),
            pdt,
        )
        # FSDP-style: gather the table's width before the lookup, so the rows come out batch-sharded.
        embed = nn.with_logical_constraint(embed, ("vocab", None))
        x = jnp.take(embed, tokens, axis=0).astype(jnp.float32)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        c = TimeEmbedding(cfg, name="time")(sigma)
        if cfg.num_classes:
            c = c + nn.silu(self._label_embedding(labels, tokens.shape[0]))
        elif labels is not None:
            raise ValueError("labels were given to a DiT with model.num_classes = 0")
        c = nn.with_logical_constraint(c, ("batch", None))
        cos, sin = layers.rotary_tables(length, cfg.hidden_size // cfg.num_heads)

        block_cls = nn.remat(DiTBlock, static_argnums=(5,)) if cfg.remat else DiTBlock
        for i in range(cfg.num_layers):
            x = block_cls(cfg, name=f"block_{i}")(x, c, cos, sin, not train)

        mod = adaln_modulation(c, 2, cfg, "final_adaln")
        y = layers.modulate(layers.LayerNorm(pdt, name="final_norm")(x), mod[:, 0], mod[:, 1])
        logits = layers.dense(
            cfg.padded_vocab_size(self.vocab_size),
            ("embed", "vocab"),
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=pdt, init=cfg.init,
            use_bias=True,
            zero_init=True,
            name="output",
        )(y.astype(jnp.dtype(cfg.dtype)))
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
        return logits[..., : self.vocab_size]

    def _label_embedding(self, labels: jax.Array | None, batch: int) -> jax.Array:
        """E[labels] [B, cond_dim]; None reads the last row ("no label") for every sequence."""
        cfg = self.cfg
        table = self.param(
            "label_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "cond")),  # nn.Embedding's.
            (cfg.num_classes + 1, cfg.cond_dim),
            jnp.dtype(cfg.param_dtype),
        )
        if labels is None:
            labels = jnp.full((batch,), cfg.num_classes, jnp.int32)
        return jnp.take(table, labels, axis=0).astype(jnp.float32)
