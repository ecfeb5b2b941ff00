"""Molecules as RDKit reads them: parsing, canonical SMILES and the properties the QM9 experiment labels and
scores (QED, ring count), in one place for the corpus (`qm9_builder.py`) and the chemistry metrics
(`evaluation/chemistry.py`), so both read a molecule the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from rdkit import Chem, RDLogger
from rdkit.Chem import QED

PROPERTIES = ("qed", "ring_count")
RDLogger.DisableLog("rdApp.*")  # An invalid sample is a figure here, not a warning on stderr.


def ring_count(mol: Chem.Mol) -> int:
    return len(Chem.GetSymmSSSR(mol))


PROPERTY_FNS: dict[str, Callable[[Chem.Mol], float]] = {"qed": QED.qed, "ring_count": ring_count}


def parse(smiles: str) -> Chem.Mol | None:
    """The molecule of `smiles`, or None when RDKit cannot parse it or it has no atom."""
    if not smiles:
        return None
    mol = Chem.MolFromSmiles(smiles)
    return mol if mol is not None and mol.GetNumAtoms() > 0 else None


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES of `smiles`, or None when it is not a valid molecule."""
    mol = parse(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)
