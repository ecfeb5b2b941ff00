"""The Markov chain of the embedded sparse Markov language, in one place for the corpus and its evaluation:
the `MarkovChain` (initial [V], transition [V, V]), drawing one (`make_chain`) and sampling sequences from
it, its exact likelihood and entropies (`log_prob`, `sequence_entropy_per_token`, `entropy_rate`), the
forbidden transitions of token sequences (`step_probs`, `forbidden_count`), and its file
`chain.npz` (`save_chain`, `load_chain`). The tfds builder (`markov_builder.py`) writes the corpus from
these functions and the evaluation scores samples with them, so both always agree on what the chain is.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from proseco_jax.data.errors import DataError, one_line

# Rows of a Dirichlet draw with small alpha can underflow to exactly 0; flooring keeps every one of the
# k successors reachable, which the language promises.
_MIN_SUCCESSOR_PROB = 1e-12
# How far from 1 a loaded distribution may sum: loose enough for a chain stored in float32 at any
# realistic V, tight enough that anything unnormalised (counts, a scaled matrix) is rejected.
_SUM_ATOL = 1e-4


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovChain:
    """A first-order Markov chain over tokens 0..V-1.

    Attributes:
      initial: float64 [V], distribution of the first token.
      transition: float64 [V, V], transition[a, b] = P(next = b | current = a); rows sum to 1.
    """

    initial: np.ndarray
    transition: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.initial.shape[0])


def make_chain(vocab_size: int, successors: int, dirichlet_alpha: float, seed: int) -> MarkovChain:
    """Draws the chain of the language: every token has exactly `successors` allowed next tokens.

    The initial distribution is Dirichlet(alpha) over all V tokens; each row's successors are a random set
    of k distinct tokens with Dirichlet(alpha) probabilities. The draws happen in a fixed order from
    `np.random.default_rng(seed)`: the initial distribution, then the successor sets (the first k of a
    random permutation per row), then the successor probabilities.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if not 1 <= successors <= vocab_size:
        raise ValueError(f"successors must be in [1, vocab_size={vocab_size}], got {successors}")
    if not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    initial = rng.dirichlet(np.full(vocab_size, float(dirichlet_alpha)))
    # argsort of iid uniforms is a uniformly random permutation per row; its first k entries are k
    # distinct successors.
    succ = np.argsort(rng.random((vocab_size, vocab_size)), axis=1)[:, :successors]
    probs = rng.dirichlet(np.full(successors, float(dirichlet_alpha)), size=vocab_size)
    probs = np.maximum(probs, _MIN_SUCCESSOR_PROB)
    probs /= probs.sum(axis=1, keepdims=True)
    transition = np.zeros((vocab_size, vocab_size), np.float64)
    np.put_along_axis(transition, succ, probs, axis=1)
    return MarkovChain(initial=initial, transition=transition)


# ------------------------------------------------------------------------------------------ sampling


def _inverse_cdf_table(transition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compact per-row sampling tables: successor ids int64 [V, K] and their CDF float64 [V, K].

    K is the largest number of nonzeros in a row. The CDF is +inf from each row's last real successor
    onwards, so an inverse-CDF draw can neither land on padding nor run off the end through rounding.
    """
    nonzero = transition > 0
    width = int(nonzero.sum(axis=1).max())
    # A stable argsort of "is zero" puts each row's nonzero columns first, in index order.
    succ = np.argsort(~nonzero, axis=1, kind="stable")[:, :width]
    cdf = np.cumsum(np.take_along_axis(transition, succ, axis=1), axis=1)
    last = nonzero.sum(axis=1) - 1
    cdf[np.arange(width)[None, :] >= last[:, None]] = np.inf
    return succ, cdf


def sample_sequences(chain: MarkovChain, num: int, length: int, seed: int) -> np.ndarray:
    """Draws `num` independent sequences of `length` tokens: int32 [num, length].

    Vectorised over sequences (one numpy step per position): 100k x 64 takes about a second.
    """
    if num < 0 or length < 1:
        raise ValueError(f"need num >= 0 and length >= 1, got num={num}, length={length}")
    rng = np.random.default_rng(seed)
    # All uniforms are drawn up front so that the stream does not depend on the chain's sparsity.
    u = rng.random((num, length))
    out = np.empty((num, length), np.int32)
    first, first_cdf = _inverse_cdf_table(chain.initial[None, :])
    out[:, 0] = first[0, (u[:, 0, None] >= first_cdf[0]).sum(axis=1)]
    succ, cdf = _inverse_cdf_table(chain.transition)
    for i in range(1, length):
        prev = out[:, i - 1]
        # Number of CDF entries <= u is the index of the drawn successor in the row's compact table.
        j = (u[:, i, None] >= cdf[prev]).sum(axis=1)
        out[:, i] = succ[prev, j]
    return out


# ------------------------------------------------------------------------------------- likelihood and entropy


def log_prob(chain: MarkovChain, tokens: np.ndarray) -> np.ndarray:
    """Exact log-likelihood in nats of each sequence: tokens int [..., L] -> float64 [...].

    Sequences that use a forbidden transition (or an impossible first token) get -inf.
    """
    tokens = np.asarray(tokens)
    with np.errstate(divide="ignore"):
        lp = np.log(chain.initial[tokens[..., 0]])
        lp = lp + np.log(chain.transition[tokens[..., :-1], tokens[..., 1:]]).sum(axis=-1)
    return lp


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)


def stationary_distribution(chain: MarkovChain) -> np.ndarray:
    """The long-run token distribution reached from `chain.initial`: float64 [V].

    Computed as initial @ lim_n ((I + T) / 2)^n by repeated squaring. The lazy chain has the same
    stationary distributions as T but is aperiodic, so the limit exists even for periodic chains, and
    starting from `initial` picks the right one when the chain is reducible.
    """
    v = chain.vocab_size
    m = 0.5 * (np.eye(v) + chain.transition)
    for _ in range(64):  # (I + T)/2 raised to 2^64: converged for any chain of interest.
        m = m @ m
        m /= m.sum(axis=1, keepdims=True)  # Keeps rounding from drifting the rows off the simplex.
    pi = chain.initial @ m
    return pi / pi.sum()


def entropy_rate(chain: MarkovChain) -> float:
    """Entropy rate of the stationary chain in nats per token: sum_x pi(x) H(T[x])."""
    return float(stationary_distribution(chain) @ _entropy(chain.transition))


def sequence_entropy_per_token(chain: MarkovChain, length: int) -> float:
    """Exact entropy per token, in nats, of length-`length` sequences started from `chain.initial`.

    H(x_0..x_{L-1}) / L = (H(initial) + sum_{i=1}^{L-1} sum_x P(x_{i-1} = x) H(T[x])) / L. This is the
    floor that a model's validation loss per token (nats; divide by ln 2 for bits) can reach, and what
    `evaluation.markov_scoring.markov_metrics`' chain_nll estimates on data drawn from the chain.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    row_entropy = _entropy(chain.transition)
    total = float(_entropy(chain.initial))
    marginal = chain.initial
    for _ in range(1, length):
        total += float(marginal @ row_entropy)
        marginal = marginal @ chain.transition
    return total / length


# ------------------------------------------------------------------------------------------ scores


def step_probs(transition: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """T(x_{i-1}, x_i) of int tokens [..., L]: float64 [..., L-1], 0 where an id is outside the chain."""
    vocab = transition.shape[0]
    a, b = tokens[..., :-1], tokens[..., 1:]
    inside = (a >= 0) & (a < vocab) & (b >= 0) & (b < vocab)
    return np.where(inside, transition[np.clip(a, 0, vocab - 1), np.clip(b, 0, vocab - 1)], 0.0)


def forbidden_count(
    tokens: np.ndarray | Sequence[Sequence[int]], chain: MarkovChain | np.ndarray
) -> int:
    """Forbidden transitions (T(a, b) = 0) in int tokens [..., L], against a chain or its transition.

    Ids outside the chain (such as a [MASK] id V) make every transition they take part in forbidden.
    """
    transition = chain.transition if isinstance(chain, MarkovChain) else np.asarray(chain)
    return int((step_probs(transition, np.asarray(tokens)) == 0).sum())


# ------------------------------------------------------------------------------------------ chain.npz


def save_chain(chain: MarkovChain, path: str | os.PathLike) -> None:
    """Writes `chain` to `path` as an .npz with arrays `initial` [V] and `transition` [V, V].

    The file is written to a temporary name and renamed, so readers never see a half-written file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".chain.", suffix=".npz.tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, initial=chain.initial, transition=chain.transition)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        raise DataError(f"cannot write Markov chain to {path}: {e}") from e


def _chain_problem(initial: np.ndarray, transition: np.ndarray) -> str | None:
    """What keeps (initial, transition) from being a Markov chain, or None if nothing does."""
    if initial.ndim != 1 or transition.shape != (initial.shape[0], initial.shape[0]):
        return f"has initial {initial.shape} and transition {transition.shape}; expected [V] and [V, V]"
    if initial.shape[0] == 0:
        return "has an empty vocabulary"
    not_distributions = "does not hold probability distributions"
    for name, array in (("initial", initial), ("transition", transition)):
        if not np.all(np.isfinite(array)) or np.any(array < 0):
            return f"{not_distributions}: {name} has negative or non-finite entries"
    if abs(initial.sum() - 1.0) > _SUM_ATOL:
        return f"{not_distributions}: initial sums to {initial.sum():.6f}, not 1"
    row_sums = transition.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > _SUM_ATOL:
        return f"{not_distributions}: transition row {worst} sums to {row_sums[worst]:.6f}, not 1"
    return None


def load_chain(path: str | os.PathLike) -> MarkovChain:
    """Reads a chain written by `save_chain` (float64 arrays), checking that it is a Markov chain.

    Raises:
      DataError: one line naming the file, when it is missing, unreadable (not an .npz archive, or
        without `initial` or `transition`), or not a chain (shapes other than [V] and [V, V], negative or
        non-finite entries, or a distribution whose sum is off 1 by more than 1e-4).
    """
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"Markov chain file not found: {path}") from e
    except Exception as e:  # A truncated or foreign file can fail in zipfile, numpy's format or the OS.
        raise DataError(f"Markov chain file {path} is unreadable: {one_line(e)}") from e
    if not hasattr(loaded, "files"):  # np.load returns a bare ndarray for a .npy file.
        raise DataError(f"Markov chain file {path} is unreadable: a single array, not an .npz archive")
    with loaded:
        missing = [key for key in ("initial", "transition") if key not in loaded.files]
        if missing:
            raise DataError(f"Markov chain file {path} is unreadable: it lacks array(s) {', '.join(missing)}")
        try:
            initial = np.asarray(loaded["initial"], np.float64)
            transition = np.asarray(loaded["transition"], np.float64)
        except Exception as e:  # A damaged member, or arrays that are not numbers.
            raise DataError(f"Markov chain file {path} is unreadable: {one_line(e)}") from e
    problem = _chain_problem(initial, transition)
    if problem:
        raise DataError(f"Markov chain file {path} {problem}")
    return MarkovChain(initial=initial, transition=transition)
