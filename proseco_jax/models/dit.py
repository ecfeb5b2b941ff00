"""The DiT denoiser f_theta(z_t, sigma) -> logits, compatible with MDLM's DiT.

Token embedding -> N blocks of [adaLN-modulated LayerNorm -> rotary bidirectional self-attention -> gated
residual; adaLN-modulated LayerNorm -> GELU MLP -> gated residual] -> adaLN final layer -> logits over the
vocabulary including [MASK]. The adaLN shift/scale/gate come from c = SiLU(MLP(sinusoidal(sigma))); with
time conditioning off, sigma = 0 is fed, so c is a learned constant (as in the paper's runs). All adaLN and
output projections start at zero, so an untrained model predicts the uniform distribution.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from proseco_jax.models import layers


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Static shape and numerics of the denoiser (see `config.model` for each field's meaning)."""

    vocab_size: int  # Model vocabulary, [MASK] included.
    num_layers: int
    hidden_size: int
    num_heads: int
    cond_dim: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    max_length: int = 1024
    vocab_multiple: int = 8
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @classmethod
    def from_config(cls, config) -> DiTConfig:
        """Builds the model config from the top-level config (data + model sections)."""
        m = config.model
        return cls(
            vocab_size=config.data.vocab_size + 1,
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            num_heads=m.num_heads,
            cond_dim=m.cond_dim,
            mlp_ratio=m.mlp_ratio,
            dropout=m.dropout,
            max_length=m.max_length,
            vocab_multiple=m.vocab_multiple,
            dtype=m.dtype,
            param_dtype=m.param_dtype,
            remat=m.remat,
        )


class TimeEmbedding(nn.Module):
    """sigma [B] -> SiLU(MLP(sinusoidal(sigma))) [B, cond_dim]."""

    cfg: DiTConfig
    frequency_dim: int = 256

    @nn.compact
    def __call__(self, sigma: jax.Array) -> jax.Array:
        cfg = self.cfg
        pdt = jnp.dtype(cfg.param_dtype)
        h = layers.timestep_embedding(sigma, self.frequency_dim)
        h = layers.dense(
            cfg.cond_dim, (None, "cond"), dtype=jnp.float32, param_dtype=pdt, use_bias=True, name="fc1"
        )(h)
        h = layers.dense(
            cfg.cond_dim, (None, "cond"), dtype=jnp.float32, param_dtype=pdt, use_bias=True, name="fc2"
        )(nn.silu(h))
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
        mod = layers.dense(
            (6, d),
            ("cond", None, "embed"),
            dtype=jnp.float32,
            param_dtype=pdt,
            use_bias=True,
            zero_init=True,
            name="adaln",
        )(c)
        mod = nn.with_logical_constraint(mod, ("batch", None, "act_embed"))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod[:, i] for i in range(6))

        # Attention.
        y = layers.modulate(layers.LayerNorm(pdt, name="norm1")(x), shift_a, scale_a).astype(dt)
        qkv = layers.dense(
            (3, h, d // h), ("embed", None, "heads", "kv"), dtype=dt, param_dtype=pdt, name="qkv"
        )(y)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = nn.with_logical_constraint(
            layers.apply_rotary(q, cos, sin), ("batch", "length", "act_heads", None)
        )
        k = nn.with_logical_constraint(
            layers.apply_rotary(k, cos, sin), ("batch", "length", "act_heads", None)
        )
        attn = layers.attention(q, k, v)
        out = layers.dense(
            d, ("heads", "kv", "embed"), dtype=dt, param_dtype=pdt, contract_axes=2, name="attn_out"
        )(attn)
        out = nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
        x = x + gate_a[:, None, :] * out.astype(jnp.float32)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

        # MLP.
        y = layers.modulate(layers.LayerNorm(pdt, name="norm2")(x), shift_m, scale_m).astype(dt)
        y = layers.dense(
            cfg.mlp_ratio * d, ("embed", "mlp"), dtype=dt, param_dtype=pdt, use_bias=True, name="mlp_in"
        )(y)
        y = nn.with_logical_constraint(nn.gelu(y, approximate=True), ("batch", "length", "act_mlp"))
        y = layers.dense(d, ("mlp", "embed"), dtype=dt, param_dtype=pdt, use_bias=True, name="mlp_out")(y)
        y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
        x = x + gate_m[:, None, :] * y.astype(jnp.float32)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class DiT(nn.Module):
    """Denoiser: tokens [B, L] int32, sigma [B] -> logits [B, L, vocab_size] float32."""

    cfg: DiTConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, sigma: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.cfg
        pdt = jnp.dtype(cfg.param_dtype)
        length = tokens.shape[1]
        embed = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (cfg.padded_vocab_size, cfg.hidden_size),
            pdt,
        )
        # FSDP-style: gather the table's width before the lookup, so the rows come out batch-sharded.
        embed = nn.with_logical_constraint(embed, ("vocab", None))
        x = jnp.take(embed, tokens, axis=0).astype(jnp.float32)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        c = nn.with_logical_constraint(TimeEmbedding(cfg, name="time")(sigma), ("batch", None))
        cos, sin = layers.rotary_tables(length, cfg.hidden_size // cfg.num_heads)

        block_cls = nn.remat(DiTBlock, static_argnums=(5,)) if cfg.remat else DiTBlock
        for i in range(cfg.num_layers):
            x = block_cls(cfg, name=f"block_{i}")(x, c, cos, sin, not train)

        mod = layers.dense(
            (2, cfg.hidden_size),
            ("cond", None, "embed"),
            dtype=jnp.float32,
            param_dtype=pdt,
            use_bias=True,
            zero_init=True,
            name="final_adaln",
        )(c)
        mod = nn.with_logical_constraint(mod, ("batch", None, "act_embed"))
        y = layers.modulate(layers.LayerNorm(pdt, name="final_norm")(x), mod[:, 0], mod[:, 1])
        logits = layers.dense(
            cfg.padded_vocab_size,
            ("embed", "vocab"),
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=pdt,
            use_bias=True,
            zero_init=True,
            name="output",
        )(y.astype(jnp.dtype(cfg.dtype)))
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
        return logits[..., : cfg.vocab_size]
