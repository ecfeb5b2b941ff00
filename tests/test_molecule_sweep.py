"""Molecules in the sweep: the chemistry scorer on hand-made token rows, the guidance grid, the frontier
headline and guidance's effect over seeds on constructed rows, the guidance plot, the label of guided
sample records, and the molecule demo end to end with two sampling seeds."""

import json
import os

import numpy as np
import pytest
from conftest import REPO, TINY_MODEL_OVERRIDES, run_binary

pytest.importorskip("rdkit")

from proseco_jax import config_base, inference  # noqa: E402
from proseco_jax.data import smiles  # noqa: E402
from proseco_jax.evaluation import chemistry_scoring, grid, headline, report  # noqa: E402

LENGTH = 12
CORPUS = frozenset({"CCO", "c1ccccc1"})  # canonical SMILES of the "training set"


def _tokenizer() -> smiles.SmilesTokenizer:
    return smiles.SmilesTokenizer(["C", "O", "N", "(", ")", "=", "1", "c"])


def _rows(tokenizer: smiles.SmilesTokenizer, strings: list[str]) -> np.ndarray:
    return np.stack([tokenizer.encode_padded(s, LENGTH) for s in strings])


def test_scorer_counts_validity_uniqueness_and_both_novelty_rules():
    tokenizer = _tokenizer()
    scorer = chemistry_scoring.ChemistryScorer(tokenizer, CORPUS, "ring_count")
    # A training molecule, a novel one twice, an unparsable one, a training molecule spelled
    # non-canonically (novel by the authors' rule only).
    tokens = _rows(tokenizer, ["CCO", "CCN", "CCN", "C(", "OCC"])
    assert scorer.smiles(tokens) == ["CCO", "CCN", "CCN", "C(", "OCC"]
    row = scorer.score(tokens)
    assert row["num_samples"] == 5
    assert row["num_valid"] == 4 and row["validity"] == pytest.approx(0.8)
    assert row["num_unique"] == 3
    assert row["num_novel"] == 2 and row["num_novel_canonical"] == 1
    assert row["missed_novel"] == pytest.approx(1 - 2 / 5)
    assert row["ring_count_valid_mean"] == 0.0
    ringed = scorer.score(_rows(tokenizer, ["c1ccccc1", "C1CC1"]))
    assert ringed["num_novel"] == 1 and ringed["ring_count_novel_mean"] == 1.0
    reference = scorer.reference(_rows(tokenizer, ["CCO", "c1ccccc1"]))
    assert reference["num_novel"] == 0 and reference["validity"] == 1.0


def test_scorer_rewrites_and_marks():
    tokenizer = _tokenizer()
    scorer = chemistry_scoring.ChemistryScorer(tokenizer, CORPUS, "qed")
    first, final = _rows(tokenizer, ["C(", "C("]), _rows(tokenizer, ["CCO", "C("])
    mask_id = tokenizer.vocab_size
    history = np.stack([np.full_like(first, mask_id), first, final])  # [T, N, L]
    out = scorer.rewrites(history, mask_id)
    # C( [EOS] [PAD] -> CCO [EOS]: three positions of the first sample rewritten, none of the second.
    assert out["validity_first_decoded"] == 0.0 and out["rewritten"] == pytest.approx(1.5)
    assert scorer.mark(tokenizer.encode_array("(")[0], tokenizer.encode_array("C")[0]) == "[(→C]"
    assert scorer.mark(smiles.PAD, tokenizer.encode_array("O")[0]) == "[∅→O]"
    assert scorer.sample_note(first[0], final[0]) == "invalid as first decoded, valid after correction"
    with pytest.raises(ValueError):
        chemistry_scoring.ChemistryScorer(tokenizer, CORPUS, "weight")


def test_guidance_grid_settings():
    base = config_base.Sampling()
    full = grid.GRIDS["chemistry"](base, 32)
    assert len(full) == 6 * 3 * 2 + 3  # and one ProSeCo row per T with the authors' corrector
    shapes = {(s.sampling.sampler, s.sampling.steps, s.sampling.guidance_scale, s.applied.num_corrector_steps,
               s.sampling.guidance_corrector) for s in full}
    assert len(shapes) == len(full)
    assert {s.sampling.guidance_label for s in full} == {grid.GUIDED_LABEL} == {1}
    assert {s.sampling.steps for s in full} == {32, 64, 128}
    assert {s.sampling.guidance_scale for s in full} == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert {s.applied.num_corrector_steps for s in full if s.sampling.sampler == "mdlm"} == {0}
    quick = grid.guidance_grid(base, 32, quick=True)
    assert [(s.sampling.sampler, s.sampling.steps, s.sampling.guidance_scale, s.sampling.guidance_corrector)
            for s in quick if s.sampling.sampler == "proseco"] == [
        ("proseco", 32, 0.0, "guided"), ("proseco", 32, 3.0, "guided"), ("proseco", 32, 3.0, "conditional")]
    assert [(s.sampling.steps, s.sampling.guidance_scale) for s in quick if s.sampling.sampler == "mdlm"] == [
        (32, 0.0), (32, 3.0)]


def _row(sampler: str, novel: float, qed: float, gamma: float = 3.0) -> dict:
    return {"sampler": sampler, "family": sampler.upper(), "steps": 32,
            "corrector_steps": 2 * (sampler != "mdlm"), "corrector_every": 1, "guidance_scale": gamma,
            "nfe": 32.0, "step_nfe": 32.0, "num_novel": novel,
            "num_samples": 1024, "qed_novel_mean": qed, "validity": 0.5}


def test_molecule_headline_met_and_not_met():
    mdlm = [_row("mdlm", 300, 0.50, 0.0), _row("mdlm", 110, 0.60), _row("mdlm", 40, 0.58, 5.0)]
    better = [_row("proseco", 400, 0.52, 0.0), _row("proseco", 205, 0.61), _row("proseco", 120, 0.64, 5.0)]
    head = headline.molecule_claims(mdlm + better, "qed")
    assert head["baseline_best"]["num_novel"] == 110 and head["baseline_count"] == 110
    assert head["method_count"] == 205 and head["count_met"]
    assert head["method_property"] == pytest.approx(0.64) and head["property_met"]
    assert head["met"]
    assert any(line.endswith(": met") for line in headline.molecule_lines(head))
    worse = [_row("proseco", 250, 0.50, 0.0), _row("proseco", 100, 0.59)]
    head = headline.molecule_claims(mdlm + worse, "qed")
    assert head["method_count"] == 0 and not head["count_met"]
    assert not head["property_met"] and not head["met"]
    assert headline.molecule_lines(head)[-1].endswith("not met")
    # Rows with too few novel molecules are no points of the frontier.
    head = headline.molecule_claims([_row("mdlm", 5, 0.9)] + better, "qed")
    assert "note" in head and headline.molecule_lines(head)[0].startswith("headline:")


def _valid(sampler: str, gamma: float, steps: int, valid: float, qed: float, corrector: str = "guided"):
    return dict(_row(sampler, 20, qed, gamma), steps=steps, num_valid=valid, qed_valid_mean=qed,
                guidance_corrector=corrector)


def test_guidance_gain_pools_the_valid_molecules_over_t_and_is_met_when_the_ranges_do_not_overlap():
    def seed_rows(low: float, high: float) -> list[dict]:
        rows = [_valid(s, 0.0, 32, 10, low) for s in ("mdlm", "proseco")]
        rows += [_valid(s, 0.0, 64, 30, low + 0.04) for s in ("mdlm", "proseco")]
        rows += [_valid(s, 3.0, 32, 5, high) for s in ("mdlm", "proseco")]
        return rows + [_valid("proseco", 3.0, 32, 50, 0.1, corrector="conditional")]  # ignores gamma

    gain = headline.guidance_gain(seed_rows(0.40, 0.60), "qed")
    assert gain["proseco"]["low"] == pytest.approx((10 * 0.40 + 30 * 0.44) / 40)
    assert gain["proseco"]["high"] == pytest.approx(0.60) and gain["mdlm"]["high"] == pytest.approx(0.60)
    seeds = [seed_rows(0.40, 0.60), seed_rows(0.45, 0.55), seed_rows(0.42, 0.50)]
    heads = [headline.molecule_claims(rows, "qed") for rows in seeds]
    head = headline.molecule_spread(heads, seeds, "qed", [0, 1, 2])
    high = head["guidance"]["proseco"]["high"]
    assert (high["median"], high["min"], high["max"]) == pytest.approx((0.55, 0.50, 0.60))
    assert head["guidance"]["proseco"]["low"]["max"] == pytest.approx(0.48)  # (10 * .45 + 30 * .49) / 40
    assert head["guidance_met"]  # 0.50 > 0.48: the gamma = 3 range lies above the gamma = 0 range
    lines = headline.molecule_spread_lines(head)
    assert "over 3 seeds" in lines[0] and lines[2].endswith("range above the γ=0 range: met")
    overlapping = seeds + [seed_rows(0.40, 0.48)]
    heads = [headline.molecule_claims(rows, "qed") for rows in overlapping]
    head = headline.molecule_spread(heads, overlapping, "qed", [0, 1, 2, 3])
    assert head["guidance"]["proseco"]["high"]["median"] > head["guidance"]["proseco"]["low"]["median"]
    assert not head["guidance"]["proseco"]["met"] and not head["guidance_met"]


def test_min_novel_scales_with_the_samples_per_row():
    assert [headline.min_novel(n) for n in (128, 64, 48, 1)] == [10, 5, 4, 1]


def test_marked_molecules_leave_rewrites_between_specials_unmarked():
    tokenizer = _tokenizer()
    scorer = chemistry_scoring.ChemistryScorer(tokenizer, CORPUS, "qed")
    first = tokenizer.encode_padded("CO", LENGTH)  # [BOS] C O [EOS] [PAD] ...
    final = first.copy()
    final[2], final[3], final[4] = tokenizer.encode_array("C")[0], tokenizer.encode_array("O")[0], smiles.EOS
    mask_id = tokenizer.vocab_size
    history = np.stack([np.full_like(first, mask_id), first, final])  # [T, L]: O->C, EOS->O, PAD->EOS
    assert report.marked_text(history, mask_id, scorer, None) == "C[O→C][∅→O]"  # PAD->EOS: not marked
    rows = [dict(_row("proseco", 20, 0.5), steps=16, preset="")]
    out = {"tokens": final[None], "history": history[:, None], "nfe": np.array([40])}
    lines = report.correction_lines({"rows": rows}, [out], scorer, mask_id, 1)
    assert lines[1].startswith("sample 0: 3 tokens rewritten (1 between tokens that render alike, not "
                               "marked)")


def test_guidance_plot_writes_png(tmp_path):
    rows = [_row("mdlm", 300, 0.50, 0.0), _row("mdlm", 110, 0.60), _row("proseco", 205, 0.61)]
    for row in rows:
        row["family"] = "MDLM" if row["sampler"] == "mdlm" else "ProSeCo S=2 ω=1"
    results = {"scorer": "chemistry", "rows": rows, "data": {"qed_valid_mean": 0.47},
               "headline": headline.molecule_claims(rows, "qed")}
    path = tmp_path / "novel_vs_property.png"
    report.plot(results, None, str(path))
    assert path.stat().st_size > 0


def test_guided_records_carry_label():
    batch = {"tokens": np.zeros((2, 4), np.int32), "nfe": np.array([64, 64]),
             "predictor_nfe": np.array([64, 64]), "corrector_nfe": np.array([0, 0]),
             "step_nfe": np.array([32, 32])}
    records = next(inference.sample_records([batch], lambda t: "C", label=1))
    assert [(r["label"], r["step_nfe"], r["text"]) for r in records] == [(1, 32, "C"), (1, 32, "C")]
    unguided = next(inference.sample_records([batch], lambda t: "C"))
    assert "label" not in unguided[0] and "step_nfe" not in unguided[0]


@pytest.mark.slow
def test_quick_molecule_demo_with_two_seeds_samples_one_model_and_reports_guidance_with_its_spread(tmp_path):
    csv_path = tmp_path / "mols.csv"
    with open(os.path.join(REPO, "tests", "data", "qm9_sample.txt"), encoding="utf-8") as f:
        csv_path.write_text("SMILES\n" + "".join(f.readlines()[:200]))
    workdir = tmp_path / "w"
    proc = run_binary("demo.py", f"--config={os.path.join(REPO, 'configs', 'qm9.py')}:cpu",
                      f"--workdir={workdir}", "--quick", "--seeds=2", *TINY_MODEL_OVERRIDES,
                      f"--config.data.files={csv_path}", f"--config.data.data_dir={tmp_path / 'data'}",
                      "--config.train.batch_size=8", "--config.train.num_steps=4",
                      "--config.train.eval_every=4", "--config.train.eval_batches=1", "--num_samples=8",
                      "--show=1", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    per_seed = results["per_seed"]
    assert [p["seed"] for p in per_seed] == [0, 1] and not (workdir / "seed1").exists()  # one training
    assert {p["model"]["workdir"] for p in per_seed} == {str(workdir)}
    head = results["headline"]
    assert set(head["guidance"]) == {"mdlm", "proseco"}
    gains = [headline.guidance_gain(p["rows"], "qed") for p in per_seed]
    assert head["guidance"]["proseco"]["high"]["values"] == [g["proseco"]["high"] for g in gains]
    assert "headline over 2 seeds" in proc.stdout and "guidance, proseco: valid mean qed" in proc.stdout
