"""Building blocks of the denoisers: rotary embeddings, bidirectional attention, norms, adaLN helpers.

Attention is the standard softmax(q k^T / sqrt(d_h)) v without a causal mask (the denoiser sees the whole
sequence). It is written as reshaped batched matmuls over a merged (batch * heads) axis, which XLA lowers
to a few large GEMMs; on CPU this ran several times faster than a naive multi-axis einsum. Rotary position
embeddings (RoPE, Su et al.) rotate q and k; every parameter carries logical axis names so that
`sharding.py` can place it on a device mesh.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from proseco_jax.configlib import ConfigError

Dtype = jnp.dtype


def check_head_split(hidden_size: int, num_heads: int) -> None:
    """ConfigError unless the width splits into heads of even width (rotary rotates pairs of features)."""
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ConfigError(f"model.hidden_size={hidden_size} must split into model.num_heads={num_heads} "
                          "heads of even width")


# The DiT's rotary base (MDLM's and the reference's); LLaDA passes its own rope_theta.
ROTARY_BASE = 10_000.0


def rotary_frequencies(head_dim: int, base: float = ROTARY_BASE) -> np.ndarray:
    """float32 [head_dim // 2]: 1 / base^(2i / head_dim), computed in float32 as PyTorch's rotary modules do
    (the reference DiT's and LLaDA's)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(np.float32)


def rotary_tables(length: int, head_dim: int, base: float = ROTARY_BASE) -> tuple[np.ndarray, np.ndarray]:
    """Rotary tables (cos, sin), float32 [length, 2, head_dim // 2], for `apply_rotary`.

    Angle (p, i) = p * rotary_frequencies(head_dim, base)[i], in float32. cos repeats
    over the two halves of a head and sin is (-sin, +sin), so the rotation is x cos + swap_halves(x) sin.
    They are host constants: XLA then reads them instead of recomputing cos and sin inside every fused
    loop that touches q or k (in the backward pass too).
    """
    angles = np.arange(length, dtype=np.float32)[:, None] * rotary_frequencies(head_dim, base)[None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    return np.stack([cos, cos], axis=-2), np.stack([-sin, sin], axis=-2)


def apply_rotary(x: jax.Array, cos: np.ndarray, sin: np.ndarray) -> jax.Array:
    """Rotates x [B, L, H, Dh] by position, in float32, back to x's dtype: halves (x1, x2) ->
    (x1 cos - x2 sin, x2 cos + x1 sin) with the tables of `rotary_tables`.

    The halves are swapped by reversing an axis of size 2, whose gradient is the same reversal; slicing and
    concatenating them would make the gradient a sum of zero-padded copies.
    """
    b, length, h, dh = x.shape
    halves = x.astype(jnp.float32).reshape(b, length, h, 2, dh // 2)
    cos, sin = cos[None, :, None], sin[None, :, None]
    rotated = halves * cos + jax.lax.rev(halves, (3,)) * sin
    return rotated.reshape(x.shape).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Bidirectional softmax attention; q [B, L, H, Dh], k, v [B, L, Hkv, Dh] -> [B, L, H, Dh].

    Hkv = H is multi-head attention; Hkv < H (dividing H) is grouped-query attention, where query head h
    reads key/value head h // (H / Hkv) (the order of PyTorch's `repeat_interleave`). A group's queries
    share their keys, so they are folded into the query length rather than the keys being copied. Scores
    and softmax are computed in float32 whatever the input dtype.
    """
    b, length, h, dh = q.shape
    hkv = k.shape[2]
    group = h // hkv
    to_bh = lambda a: a.transpose(0, 2, 1, 3).reshape(b * hkv, length, dh)  # noqa: E731
    kb, vb = to_bh(k), to_bh(v)
    qb = q.reshape(b, length, hkv, group, dh).transpose(0, 2, 3, 1, 4).reshape(b * hkv, group * length, dh)
    scores = jnp.matmul(qb, kb.transpose(0, 2, 1), preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores * (dh**-0.5), axis=-1).astype(v.dtype)
    out = jnp.matmul(probs, vb, preferred_element_type=jnp.float32).astype(v.dtype)  # [B*Hkv, G*L, Dh]
    return out.reshape(b, hkv, group, length, dh).transpose(0, 3, 1, 2, 4).reshape(b, length, h, dh)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN modulation; x [B, L, D], shift/scale [B, D]."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in float32 (as MDLM's DiT), scale over `embed`.

    `center=False` skips the mean: RMSNorm, x / sqrt(mean(x^2) + epsilon) * scale (LLaMA's, LLaDA's).
    """

    param_dtype: Dtype = jnp.float32
    epsilon: float = 1e-5
    center: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        if self.center:
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.epsilon)
        return y * scale.astype(jnp.float32)


INITS = ("reference", "xavier")


def uniform(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound): with bound = 1/sqrt(fan_in), PyTorch's default for nn.Linear weights and biases
    (and, with fan_in = width, its kaiming_uniform(a=sqrt(5)) embedding), as the reference DiT leaves them."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _contract_dims(x_ndim: int, n_in: int) -> tuple:
    """dot_general dimension numbers of x [..., *in] . kernel [*in, *out]."""
    return (tuple(range(x_ndim - n_in, x_ndim)), tuple(range(n_in))), ((), ())


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _contract_mixed(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    return jax.lax.dot_general(x, kernel, _contract_dims(x.ndim, n_in), preferred_element_type=jnp.float32)


def _contract_mixed_fwd(x, kernel, n_in):
    return _contract_mixed(x, kernel, n_in), (x, kernel)


def _contract_mixed_bwd(n_in, residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    n_out, batch = kernel.ndim - n_in, x.ndim - n_in
    # dx = g . kernel^T over the output axes; dkernel = x^T . g over the leading (token) axes.
    dx_dims = ((tuple(range(g.ndim - n_out, g.ndim)), tuple(range(n_in, kernel.ndim))), ((), ()))
    dk_dims = ((tuple(range(batch)), tuple(range(batch))), ((), ()))
    dx = jax.lax.dot_general(g, kernel, dx_dims, preferred_element_type=jnp.float32)
    dk = jax.lax.dot_general(x, g, dk_dims, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_contract_mixed.defvjp(_contract_mixed_fwd, _contract_mixed_bwd)


def contract(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x [..., *in] . kernel [*in, *out] -> float32 [..., *out], contracting the last n_in axes of x.

    float32 operands: a plain dot. Narrower ones (bfloat16) multiply in their dtype and accumulate in
    float32, in the forward and in both backward products (the incoming gradient is cast to the operands'
    dtype first), as a TPU's matrix unit does; on CPUs with bf16 matrix instructions this is also the fast
    path, which a dot returning bf16 does not reach on XLA:CPU.
    """
    if x.dtype == jnp.float32:
        return jax.lax.dot_general(x, kernel, _contract_dims(x.ndim, n_in))
    return _contract_mixed(x, kernel, n_in)


class Dense(nn.Module):
    """y = x . kernel (+ bias), contracting the last `contract` axes of x; kernel [*in, *features].

    The kernel is created at its full shape, so its logical axis names, one per kernel dimension, apply to
    it as is. `init`: "reference" draws kernel and bias from U(+-1/sqrt(fan_in)) (PyTorch's nn.Linear, as
    the reference DiT), "xavier" a Glorot-uniform kernel and a zero bias; `zero_init` zeroes both.
    """

    features: tuple[int, ...]
    axes: tuple[str | None, ...]
    contract: int = 1
    use_bias: bool = False
    zero_init: bool = False
    init: str = "reference"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    out_dtype: Dtype | None = None  # dtype of the result; None: `dtype` (float32 keeps the accumulator)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.contract :]
        n_in, n_out = len(in_shape), len(self.features)
        fan_in = int(np.prod(in_shape))
        if self.zero_init:
            kernel_init = bias_init = nn.initializers.zeros
        elif self.init == "reference":
            kernel_init = bias_init = uniform(fan_in**-0.5)
        else:
            kernel_init = nn.initializers.xavier_uniform(
                in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out)))
            bias_init = nn.initializers.zeros
        kernel = self.param("kernel", nn.with_logical_partitioning(kernel_init, self.axes),
                            (*in_shape, *self.features), self.param_dtype)
        y = contract(x.astype(self.dtype), kernel.astype(self.dtype), n_in)
        if self.use_bias:  # Added to the float32 accumulator, as its gradient is summed in float32.
            bias = self.param("bias", nn.with_logical_partitioning(bias_init, self.axes[n_in:]),
                              self.features, self.param_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype if self.out_dtype is None else self.out_dtype)


def dense(
    features: int | tuple[int, ...],
    axes: tuple[str | None, ...],
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    init: str = "reference",
    use_bias: bool = False,
    zero_init: bool = False,
    contract_axes: int = 1,
    out_dtype: Dtype | None = None,
    name: str | None = None,
) -> Dense:
    """A `Dense` whose kernel (and bias) carry the logical axis names `axes` (one per kernel dimension).
    out_dtype=float32 returns the float32 accumulator, for an elementwise function computed in float32
    before the next matmul (XLA:CPU evaluates bfloat16 elementwise ops through float32, rounding each)."""
    features = features if isinstance(features, tuple) else (features,)
    return Dense(features=features, axes=axes, contract=contract_axes, use_bias=use_bias, zero_init=zero_init,
                 init=init, dtype=dtype, param_dtype=param_dtype, out_dtype=out_dtype, name=name)


def timestep_embedding(sigma: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding [B, dim] of the noise level sigma [B]."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = sigma.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
