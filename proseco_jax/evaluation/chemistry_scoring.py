"""Scores of generated molecules: token rows decoded to SMILES and scored by `chemistry.metrics`.

`ChemistryScorer` is the sweep's `scoring.Scorer` of the QM9 corpus (`data.name="qm9"`): each row of
tokens is decoded by the corpus's SMILES tokenizer (BOS, EOS, PAD and [MASK] left out wherever they
stand, as the authors' evaluation strips them) and scored against the corpus's canonical SMILES (every
kept molecule, as the authors' novelty check reads the whole dataset) for `data.label_property`: validity,
uniqueness, novelty by the authors' rule (`num_novel`, the headline's) and on canonical forms
(`num_novel_canonical`), and the property's mean and quartiles over valid and over novel samples.

Its quality figure (the protocol's, lower is better) is `missed_novel` = 1 - num_novel / N, the share of
samples that are not a valid, unique, novel molecule: the complement of the paper's x-axis (novel samples
out of N), the one figure a sampler improves for every property and every guidance scale. The property the
paper's y-axis reads (`{prop}_novel_mean`, higher is better) is traded against it by the guidance scale,
so it is not a lower-is-better figure of its own: `headline.molecule_claims` reads both as a frontier.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from proseco_jax.evaluation import chemistry, sample_metrics

Record = dict[str, Any]

KIND = "chemistry"


class ChemistryScorer:
    """The `scoring.Scorer` of a molecule corpus (see the module docstring)."""

    kind = KIND
    quality = "missed_novel"
    quality_label = "1 - novel samples / N"
    quality_log_scale = False
    separator = ""
    mark_legend = "[a→b] was decoded as a and rewritten by the corrector to b (∅: no atom, an end or pad)"

    def __init__(self, tokenizer: Any, corpus: Collection[str], prop: str):
        if prop not in chemistry.PROPERTY_FNS:
            raise ValueError(f"unknown molecular property {prop!r}; expected one of {chemistry.PROPERTIES}")
        self.tokenizer = tokenizer
        self.corpus = corpus if isinstance(corpus, (set, frozenset)) else frozenset(corpus)
        self.prop = prop
        # gamma and the authors' NFE (a guided call of two evaluations counted once) lead: a guidance sweep's
        # rows differ in them.
        self.columns = (("guidance_scale", "gamma", ".0f"), ("step_nfe", "NFE(paper)", ".1f"),
                        ("validity", "valid", ".3f"), ("num_unique", "unique", ".0f"),
                        ("num_novel", "novel", ".0f"), ("num_novel_canonical", "novel(can)", ".0f"),
                        (f"{prop}_valid_mean", f"{prop}(valid)", ".3f"),
                        (f"{prop}_novel_mean", f"{prop}(novel)", ".3f"))

    def smiles(self, tokens: np.ndarray) -> list[str]:
        """The SMILES of each row of tokens int [N, L], special ids left out."""
        return [self.tokenizer.decode(row.tolist()) for row in np.asarray(tokens)]

    def _scores(self, tokens: np.ndarray) -> Record:
        tokens = np.asarray(tokens)
        row: Record = chemistry.metrics(self.smiles(tokens), self.corpus, self.prop)
        row["num_samples"] = int(tokens.shape[0])
        row["missed_novel"] = 1.0 - row["num_novel"] / max(1, row["num_samples"])
        row["entropy"] = sample_metrics.unigram_entropy(tokens)
        return row

    def reference(self, tokens: np.ndarray) -> Record:
        """The held-out molecules scored the same way (their novelty is 0: they are in the corpus)."""
        return self._scores(tokens)

    def score(self, tokens: np.ndarray) -> Record:
        return self._scores(tokens)

    def rewrites(self, history: np.ndarray, mask_id: int) -> Record:
        """Positions the corrector rewrote per sample, and the validity of the molecules as first decoded
        (before any rewrite), so a row shows what the corrector bought."""
        first, changed = sample_metrics.corrections(history, mask_id)
        valid_first = sum(chemistry.parse(s) is not None for s in self.smiles(first))
        return {"rewritten": float(changed.sum(axis=-1).mean()),
                "validity_first_decoded": valid_first / max(1, first.shape[0])}

    def render(self, token: int) -> str:
        return self.tokenizer.decode([int(token)])

    def mark(self, first: int, final: int) -> str:
        return "[{}→{}]".format(*(self.render(t) or "∅" for t in (first, final)))

    def sample_note(self, first: np.ndarray, final: np.ndarray) -> str:
        before, after = ("valid" if chemistry.parse(s) is not None else "invalid"
                         for s in self.smiles(np.stack([first, final])))
        return f"{before} as first decoded, {after} after correction"

    def summary(self, row: Record) -> str:
        gamma = row.get("guidance_scale")
        return ((f"gamma {gamma:g} | " if gamma is not None else "")
                + f"valid {row['validity']:.3f} | novel {row['num_novel']:.0f} of {row['num_samples']} "
                f"(canonical {row['num_novel_canonical']:.0f}) | {self.prop} novel mean "
                f"{row[f'{self.prop}_novel_mean']:.3f}, valid mean {row[f'{self.prop}_valid_mean']:.3f}")

    def data_summary(self, row: Record) -> str:
        return (f"valid {row['validity']:.3f} | unique {row['num_unique']:.0f} | {self.prop} mean "
                f"{row[f'{self.prop}_valid_mean']:.3f} (quartiles {row[f'{self.prop}_valid_q25']:.3f}, "
                f"{row[f'{self.prop}_valid_median']:.3f}, {row[f'{self.prop}_valid_q75']:.3f})")


def for_corpus(config: Any, data: Any, evaluator_dir: str | None = None) -> ChemistryScorer:
    """The scorer of a loaded molecule corpus: its SMILES tokenizer, its canonical set (novelty) and
    `data.label_property`. (Molecules take no evaluator; `evaluator_dir` is the factory signature's.)"""
    del evaluator_dir
    # Imported here: the builder needs RDKit and tfds, which only the molecule corpus needs.
    from proseco_jax.data import qm9_builder

    return ChemistryScorer(data.tokenizer, qm9_builder.load_canonical(data.directory),
                           config.data.label_property)
