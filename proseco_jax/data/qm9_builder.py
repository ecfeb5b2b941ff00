"""QM9 molecules as a labelled tfds corpus (array_record, no TensorFlow), as the authors' QM9 experiment.

SMILES strings are read from `data.files` (CSV, parquet or JSONL files or a glob; column or field
`data.smiles_column`), or with no files from the Hugging Face dataset `data.hub_dataset` through
`datasets` (the authors' `yairschiff/qm9`, column `canonical_smiles`; online or from its cache), by default
from the CSV files that the `qm9pack` package ships (130,831 molecules), so nothing is downloaded.
Each is canonicalised by RDKit, which computes its QED and ring count (`len(GetSymmSSSR)`) once; a
string RDKit cannot parse, or whose `[BOS] tokens [EOS]` does not fit
`data.length`, is skipped and counted in one printed line. The label is 1 where `data.label_property` lies
strictly above its `data.label_percentile` percentile over all kept molecules (the authors' rule), else 0.
A permutation seeded with 42 holds out `data.validation_fraction` (the authors' 5%) as the validation
split; the SMILES vocabulary is built from the train split. Records: `{'tokens': int32 [L], 'label': int32,
'qed': float32, 'ring_count': int32}`, tokens `[BOS] smiles [EOS] [PAD]...` with no padding mask (the loss
covers padding, so the model learns each molecule's length). Next to the data, in the version directory:

    tokenizer.txt, tokenizer.json    the SMILES vocabulary (`smiles.py`)
    canonical_smiles.txt             every kept molecule's canonical SMILES, one a line: the set that
                                     novelty is measured against
    molecules.json                   RDKit's version, the threshold, the counts read, kept and skipped
    sources.json                     the source files' names and digests (a changed file is refused), or
                                     the hub dataset's name
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import importlib.util
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import rdkit
import tensorflow_datasets as tfds
from absl import logging
from rdkit import Chem

from proseco_jax.config_base import Data
from proseco_jax.data import hub, molecules, tfds_build, tokenizers
from proseco_jax.data import smiles as smiles_lib
from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.text_sources import describe_files
from proseco_jax.data.tfds_build import RandomAccessSource, SectionConfig

TRAIN, VALIDATION = "train", "validation"
SPLIT_SEED = 42  # The authors' seed of the held-out permutation.
CANONICAL_TXT = "canonical_smiles.txt"
MOLECULES_JSON = "molecules.json"
QM9PACK_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_DESCRIPTION = "QM9 molecules as canonical SMILES tokens with QED, ring count and a percentile label."


def qm9pack_files() -> list[str]:
    """The QM9 CSV files of the installed `qm9pack` package (found without importing it: its __init__
    needs pkg_resources, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.files is empty, so QM9 is read from the qm9pack package, which is not "
                        "installed: pip install -e '.[qm9]', or set data.files to SMILES files")
    directory = os.path.join(list(spec.submodule_search_locations)[0], "data")
    paths = [os.path.join(directory, name) for name in QM9PACK_PARTS]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"the qm9pack package lacks {missing[0]}; reinstall it or set data.files")
    return paths


def read_sources(cfg: Data) -> tuple[list[str], list[str]]:
    """(the SMILES strings, the local files they come from) of `cfg`: data.files, else data.hub_dataset
    through `datasets` (no local files then), else qm9pack's CSV files."""
    if not cfg.files and cfg.hub_dataset:
        rows = hub.load_dataset(cfg.hub_dataset, "train", "QM9", "local SMILES files")
        if cfg.smiles_column not in rows.column_names:
            raise DataError(f"{cfg.hub_dataset} has no column {cfg.smiles_column!r} (data.smiles_column; the "
                            f"authors' dataset names it 'canonical_smiles'); it has {rows.column_names[:8]}")
        return ["" if v is None else str(v) for v in rows[cfg.smiles_column]], []
    paths = source_files(cfg.files)
    return [s for p in paths for s in read_smiles(p, cfg.smiles_column)], paths


def source_files(files: str) -> list[str]:
    """The files of `data.files` (a glob), or qm9pack's when empty; DataError when none match."""
    if not files:
        return qm9pack_files()
    paths = sorted(p for p in glob.glob(files, recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataError(f"no file matches data.files={files!r}")
    return paths


def read_smiles(path: str, column: str) -> list[str]:
    """The SMILES column (CSV, parquet) or field (JSONL) of one file, as strings ('' where empty)."""
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq  # Optional: needed only for parquet files.

            table = pq.read_table(path)
            if column not in table.column_names:
                raise DataError(f"{path} has no column {column!r} (data.smiles_column)")
            return ["" if v is None else str(v) for v in table.column(column).to_pylist()]
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith((".jsonl", ".json")):
                records = [json.loads(line) for line in f if line.strip()]
                if records and not all(isinstance(r, dict) and column in r for r in records):
                    raise DataError(f"{path}: a record lacks the field {column!r} (data.smiles_column)")
                return [str(r[column] or "") for r in records]
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise DataError(f"{path} has no column {column!r} (data.smiles_column)")
            return [row[column] or "" for row in reader]
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as e:
        raise DataError(f"cannot read SMILES from {path}: {one_line(e)}") from None


@dataclasses.dataclass(frozen=True)
class Molecules:
    """Kept molecules [N], in file order, and how many of the strings read were skipped."""

    canonical: list[str]
    qed: np.ndarray  # float32 [N]
    ring_count: np.ndarray  # int32 [N]
    unparsable: int
    too_long: int


def canonicalise(strings: list[str], length: int) -> Molecules:
    """Canonical SMILES, QED and ring count of the strings that parse and fit `length` with BOS and EOS."""
    canonical, qed, rings = [], [], []
    unparsable = too_long = 0
    for s in strings:
        mol = molecules.parse(s.strip())
        if mol is None:
            unparsable += 1
            continue
        c = Chem.MolToSmiles(mol)
        if len(smiles_lib.split(c)) + 2 > length:
            too_long += 1
            continue
        canonical.append(c)
        qed.append(molecules.PROPERTY_FNS["qed"](mol))
        rings.append(molecules.ring_count(mol))
    return Molecules(canonical, np.asarray(qed, np.float32), np.asarray(rings, np.int32), unparsable,
                     too_long)


def percentile_labels(values: np.ndarray, percentile: float) -> tuple[np.ndarray, float]:
    """(int32 labels: 1 strictly above the percentile of `values`, else 0; the threshold)."""
    threshold = float(np.percentile(values, percentile))
    return (values > threshold).astype(np.int32), threshold


def split_indices(n: int, validation_fraction: float, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """A seeded permutation of range(n): its last ceil(fraction * n) (at least one) are held out."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(n - 1, max(1, math.ceil(validation_fraction * n)))
    return {TRAIN: order[: n - held], VALIDATION: order[n - held :]}


class QM9(tfds_build.LocalBuilder, skip_registration=True):
    """Canonicalises, scores, labels, splits and tokenises the molecules of its config's `data` section
    (from `qm9_config`)."""

    name = "qm9"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(self.builder_config.data.length,), dtype=np.int32),
                "label": tfds.features.Tensor(shape=(), dtype=np.int32),
                "qed": tfds.features.Tensor(shape=(), dtype=np.float32),
                "ring_count": tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        del dl_manager  # Nothing is downloaded.
        cfg: Data = self.builder_config.data
        strings, paths = read_sources(cfg)
        mols = canonicalise(strings, cfg.length)
        n = len(mols.canonical)
        print(f"qm9: {len(strings):,} SMILES read, {n:,} kept, {mols.unparsable + mols.too_long:,} skipped "
              f"({mols.unparsable:,} RDKit cannot parse, {mols.too_long:,} longer than data.length="
              f"{cfg.length} with BOS and EOS)", flush=True)
        if n < 2:
            raise DataError(f"qm9: {n} molecule(s) kept of {len(strings)} read; at least 2 are needed to "
                            "hold one out for validation")
        values = mols.qed if cfg.label_property == "qed" else mols.ring_count
        labels, threshold = percentile_labels(values, cfg.label_percentile)
        splits = split_indices(n, cfg.validation_fraction)
        tokenizer = smiles_lib.SmilesTokenizer.build((mols.canonical[i] for i in splits[TRAIN]),
                                                     cfg.vocab_size)
        # self.data_dir is tfds's temporary directory here: these files appear together with the data.
        tokenizers.record(tokenizer, self.data_dir)
        with open(os.path.join(self.data_dir, CANONICAL_TXT), "w", encoding="utf-8") as f:
            f.write("".join(c + "\n" for c in mols.canonical))
        summary = {"rdkit_version": rdkit.__version__, "label_property": cfg.label_property,
                   "label_percentile": cfg.label_percentile, "threshold": threshold,
                   "label_rate": float(labels.mean()), "read": len(strings), "kept": n,
                   "unparsable": mols.unparsable, "too_long": mols.too_long,
                   "splits": {k: len(v) for k, v in splits.items()}}
        with open(os.path.join(self.data_dir, MOLECULES_JSON), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(self.data_dir, tfds_build.SOURCES_JSON), "w", encoding="utf-8") as f:
            json.dump({"files": describe_files(paths), "hub_dataset": cfg.hub_dataset,
                       "documents": summary["splits"]}, f, indent=1)
        return {split: self._generate_examples(idx, mols, labels, tokenizer) for split, idx in splits.items()}

    def _generate_examples(self, indices: np.ndarray, mols: Molecules, labels: np.ndarray,
                           tokenizer: smiles_lib.SmilesTokenizer) -> Iterator[tuple[int, dict[str, Any]]]:
        length = self.builder_config.data.length
        for key, i in enumerate(indices):
            yield key, {"tokens": tokenizer.encode_padded(mols.canonical[i], length), "label": labels[i],
                        "qed": mols.qed[i], "ring_count": mols.ring_count[i]}


def qm9_config(data: Data) -> SectionConfig:
    """The builder config of the molecule corpus `data` describes: its section with `files` made absolute,
    filed under `<label_property>_l<length>_<digest of every setting that changes the data>`."""
    data = data.replace(files=os.path.abspath(os.path.expanduser(data.files)) if data.files else "")
    data = data.replace(hub_dataset="" if data.files else data.hub_dataset)
    settings = {k: getattr(data, k) for k in ("files", "smiles_column", "length", "label_property",
                                              "label_percentile", "validation_fraction", "vocab_size")}
    if data.hub_dataset:  # Named only when set, so the corpora of files keep their names.
        settings["hub_dataset"] = data.hub_dataset
    name = f"{data.label_property}_l{data.length}_{tfds_build.settings_digest(settings)}"
    return tfds_build.section_config(data, name, "QM9 molecules as SMILES tokens.")


@dataclasses.dataclass(frozen=True)
class PreparedMolecules:
    """A prepared corpus: its splits, where it lives, its tokenizer, and the canonical set for novelty."""

    sources: dict[str, RandomAccessSource]
    version_dir: str
    tokenizer: smiles_lib.SmilesTokenizer

    @property
    def canonical_path(self) -> str:
        return os.path.join(self.version_dir, CANONICAL_TXT)


def load_canonical(version_dir: str) -> frozenset[str]:
    """The canonical SMILES of a prepared corpus (what a novel sample is not)."""
    try:
        with open(os.path.join(version_dir, CANONICAL_TXT), encoding="utf-8") as f:
            return frozenset(line.rstrip("\n") for line in f)
    except OSError as e:
        raise DataError(f"no canonical SMILES in {version_dir}: {one_line(e)}; delete it to rebuild"
                        ) from None


def _warn_if_other_rdkit(version_dir: str) -> None:
    """Logs one line when the corpus was canonicalised and scored by another RDKit version.

    A warning, not a refusal: rebuilding could renumber the SMILES vocabulary (first-seen order over the
    canonical strings), which would break every model trained on the corpus; the user decides.
    """
    try:
        with open(os.path.join(version_dir, MOLECULES_JSON), encoding="utf-8") as f:
            built_with = json.load(f)["rdkit_version"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{version_dir}/{MOLECULES_JSON} is unreadable ({one_line(e)}); delete "
                        f"{version_dir} to rebuild") from None
    if built_with != rdkit.__version__:
        logging.warning("%s was prepared with RDKit %s, this is RDKit %s: canonical SMILES (novelty), QED "
                        "and ring counts may differ from what it holds; delete it to prepare it again",
                        version_dir, built_with, rdkit.__version__)


def _check_sources(sources: dict[str, RandomAccessSource], length: int, vocab_size: int) -> None:
    for split in (TRAIN, VALIDATION):
        source = sources.get(split)
        tokens = np.asarray(source[0]["tokens"]) if source is not None and len(source) else None
        if tokens is None or tokens.shape != (length,) or tokens.max() >= vocab_size:
            raise DataError(f"split {split} is missing, empty or holds records other than int32[{length}] "
                            f"tokens below {vocab_size}")


def prepare_qm9(data: Data) -> PreparedMolecules:
    """Builds the molecule corpus `data` describes if needed (once per settings) and opens it.

    A corpus prepared by another RDKit version is used with a one-line warning (see `_warn_if_other_rdkit`).

    Raises:
      DataError (one line): no file matches, a file without the SMILES column, too few molecules, a
        vocabulary larger than data.vocab_size, data_dir not writable, or prepared data that is damaged or
        whose source files changed.
    """
    cfg = qm9_config(data)
    files, hub_dataset = cfg.data.files, cfg.data.hub_dataset

    def check_prepared(version_dir: str) -> None:
        _warn_if_other_rdkit(version_dir)
        if hub_dataset:  # No local files to compare: the hub dataset is named in the corpus's name.
            return
        try:
            paths = source_files(files)
        except DataError:  # Prepared elsewhere, or its files removed: the corpus stands on its own.
            paths = []
        tfds_build.check_files_unchanged(version_dir, paths, files or "qm9pack")

    tokenizer: smiles_lib.SmilesTokenizer | None = None  # The vocabulary saved with the data.

    def check_sources(sources: dict[str, RandomAccessSource], version_dir: str) -> None:
        nonlocal tokenizer
        tokenizer = tokenizers.load_recorded(version_dir)
        _check_sources(sources, cfg.data.length, tokenizer.vocab_size)

    def check_inputs() -> None:  # Fails before any write.
        if hub_dataset:
            hub.datasets_library("QM9", "local SMILES files")
        else:
            source_files(files)

    def announce(version_dir: str) -> None:
        print(f"preparing qm9/{cfg.name} in {version_dir}", flush=True)

    prepared = tfds_build.prepare(QM9, cfg, check_prepared=check_prepared,
                                  check_inputs=check_inputs,
                                  check_sources=check_sources, announce=announce)
    return PreparedMolecules(sources=prepared.sources, version_dir=prepared.version_dir, tokenizer=tokenizer)
