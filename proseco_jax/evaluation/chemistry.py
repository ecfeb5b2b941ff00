"""Chemistry figures of generated molecules (SMILES strings, special tokens already stripped), as the
authors' QM9 guidance evaluation computes them, plus a stricter novelty on canonical forms.

    valid    RDKit parses the string into a molecule with at least one atom
    unique   distinct valid strings / valid
    novel    the authors' rule: distinct valid strings, as written, not among the corpus's canonical SMILES
             (a sample that spells a known molecule non-canonically counts as novel); the strict rule:
             distinct canonical forms of valid samples not among the corpus's canonical SMILES
    property mean and quartiles of QED or ring count (`len(GetSymmSSSR)`) over the valid samples and over
             the novel ones (authors' rule; each distinct string once)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from rdkit import Chem

from proseco_jax.data.molecules import PROPERTIES, PROPERTY_FNS, canonical, parse, ring_count

__all__ = ["PROPERTIES", "PROPERTY_FNS", "canonical", "metrics", "parse", "ring_count"]


def _summary(values: Sequence[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}_mean": 0.0, f"{prefix}_q25": 0.0, f"{prefix}_median": 0.0, f"{prefix}_q75": 0.0}
    q25, q50, q75 = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
    return {f"{prefix}_mean": float(np.mean(values)), f"{prefix}_q25": float(q25),
            f"{prefix}_median": float(q50), f"{prefix}_q75": float(q75)}


def metrics(samples: Sequence[str], corpus: Collection[str], prop: str = "qed") -> dict[str, float]:
    """Flat figures of `samples` against `corpus` (a set of canonical SMILES), for property `prop`.

    Counts (`num_valid`, `num_unique`, `num_novel`, `num_novel_canonical`) and fractions (`validity` of all
    samples; `uniqueness`, `novelty`, `novelty_canonical` of the valid ones, as the authors divide), then
    `{prop}_valid_*` and `{prop}_novel_*` (mean, q25, median, q75; 0 where there is none).
    """
    if prop not in PROPERTY_FNS:
        raise ValueError(f"unknown molecular property {prop!r}; expected one of {PROPERTIES}")
    fn, known = PROPERTY_FNS[prop], corpus if isinstance(corpus, (set, frozenset)) else set(corpus)
    valid: list[tuple[str, Chem.Mol]] = [(s, m) for s in samples if (m := parse(s)) is not None]
    distinct = {s: m for s, m in valid}
    novel = {s: m for s, m in distinct.items() if s not in known}
    novel_canonical = {Chem.MolToSmiles(m) for m in distinct.values()} - known
    num_valid = len(valid)
    per_valid = 1.0 / num_valid if num_valid else 0.0
    out = {
        "num_samples": float(len(samples)),
        "num_valid": float(num_valid),
        "num_unique": float(len(distinct)),
        "num_novel": float(len(novel)),
        "num_novel_canonical": float(len(novel_canonical)),
        "validity": num_valid / len(samples) if samples else 0.0,
        "uniqueness": len(distinct) * per_valid,
        "novelty": len(novel) * per_valid,
        "novelty_canonical": len(novel_canonical) * per_valid,
    }
    out.update(_summary([fn(m) for _, m in valid], f"{prop}_valid"))
    out.update(_summary([fn(m) for m in novel.values()], f"{prop}_novel"))
    return out
