"""Sample quality measured exactly against the sparse Markov chain that generated the data.

For a chain with initial distribution pi [V] and transition matrix T [V, V], a sample x_0..x_{L-1} has
probability pi(x_0) prod_i T(x_{i-1}, x_i). A transition a -> b is forbidden when T(a, b) = 0.
`transition_error` is the fraction of all transitions that are forbidden (only transitions count; the
first token is not a transition); `validity` is the fraction of samples of nonzero chain probability
(no forbidden transition and pi(x_0) > 0); `chain_nll` is the mean per-token NLL in nats of the events
with nonzero probability: the first token under pi and every allowed transition, forbidden events being
left out of the average (they are counted by `transition_error`, and would make the NLL infinite);
`entropy` is the mean over samples of the entropy of each sample's token histogram (the sample entropy
of MDLM, ReMDM and ProSeCo), in nats. On data drawn from the chain, `chain_nll` estimates the chain's
per-token entropy (H(pi) + sum_{i>=1} E[H(T(x_{i-1}, .))]) / L, given by `chain_entropy_per_token`.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

_ROW_SUM_ATOL = 1e-4


def check_chain(initial: np.ndarray, transition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates a chain and returns it as float64 arrays (initial [V], transition [V, V])."""
    initial = np.asarray(initial, dtype=np.float64)
    transition = np.asarray(transition, dtype=np.float64)
    if initial.ndim != 1 or transition.shape != (initial.shape[0], initial.shape[0]):
        raise ValueError(
            f"chain must have initial [V] and transition [V, V], got {initial.shape} and {transition.shape}"
        )
    if initial.shape[0] == 0:
        raise ValueError("chain has an empty vocabulary")
    for name, array in (("initial", initial), ("transition", transition)):
        if not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"chain {name} has negative or non-finite entries")
    if abs(initial.sum() - 1.0) > _ROW_SUM_ATOL:
        raise ValueError(f"chain initial sums to {initial.sum():.6f}, not 1")
    row_sums = transition.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > _ROW_SUM_ATOL:
        raise ValueError(f"chain transition row {worst} sums to {row_sums[worst]:.6f}, not 1")
    return initial, transition


def load_chain_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads `chain.npz`; returns (initial [V], transition [V, V]) as float64 arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"chain file not found: {os.fspath(path)}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"chain file {os.fspath(path)} is not a readable .npz: {error}") from None
    if not hasattr(loaded, "files"):  # np.load returns a bare ndarray for a .npy file
        raise ValueError(f"chain file {os.fspath(path)} is a single array, not an .npz archive")
    with loaded as npz:
        missing = [key for key in ("initial", "transition") if key not in npz.files]
        if missing:
            raise ValueError(f"chain file {os.fspath(path)} lacks array(s) {', '.join(missing)}")
        initial, transition = npz["initial"], npz["transition"]
    try:
        return check_chain(initial, transition)
    except ValueError as error:
        raise ValueError(f"chain file {os.fspath(path)}: {error}") from None


def check_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Validates int tokens [N, L] (N, L >= 1, ids in [0, vocab_size)); returns them as int64."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [N, L], got shape {tokens.shape}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be non-empty, got shape {tokens.shape}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return tokens.astype(np.int64)


def sample_entropy(tokens: np.ndarray) -> np.ndarray:
    """Entropy in nats of each sample's token histogram: int tokens [N, L] -> float64 [N].

    For sample n with count c_v of token v, H_n = -sum_v (c_v / L) log(c_v / L). Any integer ids work
    (no vocabulary size is needed).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape [N, L] with L >= 1, got shape {tokens.shape}")
    num, length = tokens.shape
    ordered = np.sort(tokens, axis=1)
    starts = np.ones_like(ordered, dtype=bool)  # first position of each run of equal ids
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run = np.cumsum(starts, axis=1) - 1 + np.arange(num)[:, None] * length
    counts = np.bincount(run.ravel(), minlength=num * length).reshape(num, length)
    probs = counts / length
    plogp = np.where(counts > 0, probs * np.log(np.where(counts > 0, probs, 1.0)), 0.0)
    return -plogp.sum(axis=1)


def markov_metrics(tokens: np.ndarray, initial: np.ndarray, transition: np.ndarray) -> dict[str, float]:
    """Scores int tokens [N, L] against the chain (initial [V], transition [V, V]).

    Returns a dict of floats: `transition_error`, `validity`, `chain_nll` (nats per scored token),
    `chain_ppl` = exp(chain_nll), and `entropy` (nats), as defined in the module docstring. With L = 1
    there are no transitions and `transition_error` is 0. If no event has nonzero probability,
    `chain_nll` and `chain_ppl` are inf.
    """
    initial, transition = check_chain(initial, transition)
    tokens = check_tokens(tokens, initial.shape[0])
    first_prob = initial[tokens[:, 0]]  # [N]
    step_prob = transition[tokens[:, :-1], tokens[:, 1:]]  # [N, L-1]
    forbidden = step_prob == 0.0
    valid = ~forbidden.any(axis=1) & (first_prob > 0.0)
    allowed_first = first_prob > 0.0
    nll_sum = -np.log(first_prob[allowed_first]).sum() - np.log(step_prob[~forbidden]).sum()
    num_scored = int(allowed_first.sum()) + int((~forbidden).sum())
    chain_nll = float(nll_sum / num_scored) if num_scored else float("inf")
    return {
        "transition_error": float(forbidden.mean()) if forbidden.size else 0.0,
        "validity": float(valid.mean()),
        "chain_nll": chain_nll,
        "chain_ppl": float(np.exp(chain_nll)),
        "entropy": float(sample_entropy(tokens).mean()),
    }


def chain_entropy_per_token(initial: np.ndarray, transition: np.ndarray, length: int) -> float:
    """Per-token entropy in nats of length-`length` sequences drawn from the chain."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    initial, transition = check_chain(initial, transition)

    def entropy(probs: np.ndarray) -> np.ndarray:
        return -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0), axis=-1)

    row_entropy = entropy(transition)  # [V]
    marginal = initial
    total = float(entropy(initial))
    for _ in range(length - 1):
        total += float(marginal @ row_entropy)
        marginal = marginal @ transition
    return total / length
