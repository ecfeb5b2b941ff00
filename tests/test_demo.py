"""The sweep and the demo on the Markov language: `launch/demo.py --quick` end to end (results.json and the
PNG), the notebook, the one-line errors of the demo and sweep binaries, and the pure pieces the sweep is
made of: the grid of settings, the headline claims, the corrections read from a history and the report.
Text: tests/test_text_sweep.py."""

import json
import math
import os

import numpy as np
import pytest
from conftest import (
    CONFIG,
    REPO,
    TINY_OVERRIDES,
    assert_usage_error,
    override_values,
    run_binary,
    tiny_config,
)

from proseco_jax import config_base, fileio
from proseco_jax.data import chain as markov_chain
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import grid, headline, markov_scoring, report, sample_metrics, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTRACT_ROW_KEYS = {"sampler", "steps", "corrector_steps", "corrector_every", "nfe", "transition_error",
                     "validity", "chain_nll", "entropy"}


@pytest.mark.slow
def test_quick_demo_with_two_seeds_and_compare_training_writes_results_and_plot(tmp_path):
    workdir = tmp_path / "demo"
    proc = run_binary("demo.py", f"--workdir={workdir}", "--quick", "--compare_training", "--seeds=2",
                      f"--config.data.data_dir={tmp_path / 'data'}", *TINY_OVERRIDES,
                      "--config.train.num_steps=20",
                      "--config.train.eval_every=20", "--num_samples=8", "--show=2", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["model"]["step"] == 20  # the command line's num_steps, not --quick's 60
    samplers = {row["sampler"] for row in results["rows"]}
    assert samplers == {"mdlm", "proseco", "mdlm (MDLM-trained)"}
    assert (workdir / "mdlm" / "checkpoints").is_dir()
    assert (workdir / "seed1" / "checkpoints").is_dir()  # the Markov language trains once per seed
    per_seed = results["per_seed"]
    assert [p["seed"] for p in per_seed] == [0, 1] and per_seed[1]["model"]["workdir"].endswith("seed1")
    assert all(r["seed"] == p["seed"] for p in per_seed for r in p["rows"])
    assert results["headline"]["vs_mdlm_trained"]["baseline"] == "mdlm (MDLM-trained)"
    for row in results["rows"]:
        assert CONTRACT_ROW_KEYS <= set(row), row
        assert row["num_samples"] == 8 and row["seeds"] == 2
        assert row["nfe"] == pytest.approx(np.median([r["nfe"] for p in per_seed for r in p["rows"]
                                                      if r["family"] == row["family"]
                                                      and r["steps"] == row["steps"]]))
        if row["sampler"] != "proseco":
            assert row["corrector_nfe"] == 0 and row["rewritten"] == 0
    for row in per_seed[0]["rows"]:
        assert row["nfe"] == pytest.approx(row["predictor_nfe"] + row["corrector_nfe"])
    assert [r["steps"] for r in results["rows"] if r["preset"] == "max"] == [64]
    assert results["data"]["transition_error"] == 0.0
    figures = results["headline"]["figures"]
    assert {"baseline_best_error", "nfe_ratio", "max_error_ratio", "max_entropy_relative"} <= set(figures)
    ratios = [p["headline"]["nfe_ratio"] or 0.0 for p in per_seed]
    assert figures["nfe_ratio"]["values"] == pytest.approx(ratios)
    assert figures["nfe_ratio"]["median"] == pytest.approx(np.median(ratios))
    assert (workdir / "quality_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    assert "headline over 2 seeds" in proc.stdout and "(seed 1)" in proc.stdout
    assert "bits/token" in proc.stdout and "tokens rewritten" in proc.stdout


@pytest.mark.slow
def test_notebook_executes_with_tiny_settings(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(os.path.join(REPO, "launch", "demo.ipynb"), as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    overrides = override_values(*TINY_OVERRIDES, f"--config.data.data_dir={tmp_path / 'data'}",
                                "--config.train.num_steps=6")
    cells[0].source += f"\nQUICK = True\nWORKDIR = {str(tmp_path / 'nb')!r}\nOVERRIDES = {overrides!r}\n"
    monkeypatch.setenv("XLA_FLAGS",
                       "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": REPO}})
    client.execute()
    results = json.loads((tmp_path / "nb" / "results.json").read_text())
    assert results["model"]["step"] == 6 and len(results["rows"]) == 5
    assert (tmp_path / "nb" / "quality_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "tokens rewritten" in outputs and "forbidden transitions" in outputs


def test_demo_and_sweep_report_bad_input_in_one_line_with_exit_code_2(tmp_path):
    demo = run_binary("demo.py", f"--workdir={tmp_path / 'demo'}", "--config.data.name=text_files",
                      "--config.data.vocab_size=259", f"--evaluator_dir={tmp_path / 'absent'}")
    assert_usage_error(demo, "is not a directory")
    assert not (tmp_path / "demo").exists()  # rejected before training
    swept = run_binary("sweep.py", f"--config={CONFIG}", f"--workdir={tmp_path}", "--num_samples=0")
    assert_usage_error(swept, "num_samples")


@pytest.mark.parametrize("evaluator, num_samples, message",
                         [(True, 8, "scored against its chain"), (False, 0, "must be positive")])
def test_sweep_rejects_an_evaluator_for_markov_and_no_samples_before_any_work(tmp_path, evaluator,
                                                                              num_samples, message):
    config = config_base.resolve(tiny_config(f"--config.data.data_dir={tmp_path / 'data'}"))
    with pytest.raises(UsageError, match=message):
        sweep.sweep_workdirs(config, str(tmp_path / "work"), str(tmp_path / "out"), num_samples=num_samples,
                             evaluator_dir=str(tmp_path) if evaluator else None)
    assert not os.listdir(tmp_path)  # no corpus built, nothing written


def test_default_grid_never_exceeds_the_sequence_length_and_has_every_family():
    base = config_base.Sampling()
    settings = grid.default_grid(base, 64)
    assert {s.family for s in settings} >= {"MDLM", "ReMDM", "ProSeCo S=1 ω=1", "ProSeCo S=2 ω=2",
                                            "ProSeCo max"}
    steps = lambda sampler, g: [s.applied.steps for s in g if s.sampling.sampler == sampler]
    assert steps("mdlm", settings) == [4, 8, 16, 32, 64]
    corrected = [s for s in settings if s.sampling.sampler == "proseco" and not s.sampling.preset]
    assert max(s.applied.steps for s in corrected) == 32
    assert steps("mdlm", grid.default_grid(base, 16)) == [4, 8, 16]
    assert len(grid.default_grid(base, 64, quick=True)) == 5
    assert {s.family for s in grid.mdlm_grid(base, 64)} == {"MDLM (MDLM-trained)"}


def test_grid_settings_keep_the_config_sampling_fields_and_their_nfe_bound_is_max_nfe():
    base = config_base.Sampling(preset="fast", nucleus_p=0.9, corrector_rule="top_k", batch_size=8)
    settings = grid.default_grid(base, 64)
    assert all((s.sampling.nucleus_p, s.sampling.corrector_rule, s.sampling.batch_size) == (0.9, "top_k", 8)
               for s in settings)
    assert [s.sampling.preset for s in settings if s.sampling.preset] == ["max"]  # the config's is replaced
    top = grid.preset_setting(base, "max").applied
    assert (top.steps, top.corrector_steps, top.corrector_every, top.max_nfe) == (64, 4, 1, 64 + 4 * 64)
    assert grid.setting(base, "ProSeCo", "proseco", 16, 2, 2).applied.max_nfe == 16 + 2 * 8
    assert grid.setting(base, "MDLM", "mdlm", 16, corrector_steps=2).applied.max_nfe == 16


def _row(sampler, steps, nfe, error, entropy=1.8, corrector_steps=0, every=1, preset=""):
    return {"sampler": sampler, "steps": steps, "corrector_steps": corrector_steps, "corrector_every": every,
            "preset": preset, "nfe": nfe, "transition_error": error, "entropy": entropy}


ROWS = [
    _row("mdlm", 8, 8.0, 0.10),
    _row("mdlm", 16, 15.0, 0.08),
    _row("mdlm", 64, 40.0, 0.05),
    _row("proseco", 4, 6.0, 0.09, 1.6, 2, 1),
    _row("proseco", 8, 12.0, 0.06, 1.7, 2, 1),
    _row("proseco", 16, 24.0, 0.045, 1.75, 2, 1),
    _row("proseco", 8, 10.0, 0.07, 1.7, 1, 2),  # cheaper than the 12-NFE row, but not as good
    _row("proseco", 64, 200.0, 0.03, 1.7, 4, 1, preset="max"),
]
DATA = {"transition_error": 0.0, "entropy": 1.86}


def test_headline_finds_the_cheapest_proseco_row_reaching_mdlm_best():
    head = headline.claims(ROWS, DATA)
    assert head["baseline_best"]["nfe"] == 40.0 and head["baseline_best"]["transition_error"] == 0.05
    assert head["method_match"]["nfe"] == 24.0
    assert head["nfe_ratio"] == pytest.approx(40.0 / 24.0)
    assert not head["nfe_ratio_met"]
    # Lower envelope 6 -> 10 -> 12 -> 24: the 0.05 target lies between 12 (0.06) and 24 (0.045) NFE.
    assert head["method_match_nfe_interpolated"] == pytest.approx(12.0 + (0.01 / 0.015) * 12.0)
    assert head["nfe_ratio_interpolated"] == pytest.approx(40.0 / 20.0)


def test_headline_reads_the_max_preset_against_mdlm_best_and_the_data_entropy():
    head = headline.claims(ROWS, DATA)
    assert head["max_error_ratio"] == pytest.approx(0.03 / 0.05)
    assert head["max_error_ratio_met"]  # 0.6 <= 1 / 1.2
    assert head["max_entropy_relative"] == pytest.approx(1.7 / 1.86 - 1.0)
    assert head["max_entropy_met"]  # -8.6% is within 10%
    lines = headline.lines(head)
    assert len(lines) == 4 and "not met" in lines[1]


def test_headline_reports_a_bar_not_met_when_no_proseco_row_reaches_mdlm():
    rows = [_row("mdlm", 64, 40.0, 0.01), _row("proseco", 8, 12.0, 0.02, corrector_steps=2)]
    head = headline.claims(rows, DATA)
    assert head["method_match"] is None and head["nfe_ratio"] is None and not head["nfe_ratio_met"]
    assert head["max_preset"] is None
    assert "no row reaches" in headline.lines(head)[1]
    other = headline.claims(rows + [_row("mdlm (MDLM-trained)", 64, 40.0, 0.03)], DATA,
                            baseline="mdlm (MDLM-trained)")
    assert other["baseline_best"]["transition_error"] == 0.03 and other["method_match"]["nfe"] == 12.0
    assert headline.lines(headline.claims(rows[:1], DATA)) == ["headline: needs rows of both 'mdlm' and "
                                                               "'proseco' with 'transition_error'"]


def _seed_rows(match_nfe):
    """One seed's rows: MDLM's best error 0.05 at 40 NFE, ProSeCo reaching it at `match_nfe` (None: no
    ProSeCo row does, the max preset's error is 0.06; else 0.03), the max preset's entropy 1.7."""
    max_error = 0.03 if match_nfe is not None else 0.06
    rows = [_row("mdlm", 16, 15.0, 0.08), _row("mdlm", 64, 40.0, 0.05),
            _row("proseco", 64, 200.0, max_error, 1.7, 4, 1, preset="max")]
    if match_nfe is not None:
        rows.append(_row("proseco", 8, match_nfe, 0.05, 1.7, 2, 1))
    return rows


def test_spread_headline_is_the_median_and_range_of_the_seeds_headlines_judged_on_the_median():
    heads = [headline.claims(_seed_rows(nfe), DATA) for nfe in (10.0, 8.0, None)]  # ratios 4x, 5x, none
    head = headline.claims_spread(heads, [0, 1, 2])
    ratio = head["figures"]["nfe_ratio"]
    assert ratio["values"] == [4.0, 5.0, 0.0]  # a seed that never reaches MDLM's best counts 0x
    assert (ratio["median"], ratio["min"], ratio["max"]) == (4.0, 0.0, 5.0)
    assert head["nfe_ratio_met"]  # the median reaches the 4x bar, though one seed does not
    assert head["figures"]["method_match_nfe"] == {"values": [10.0, 8.0, None], "missing": 1, "median": 9.0,
                                                  "min": 8.0, "max": 10.0}
    assert head["figures"]["max_error_ratio"]["median"] == pytest.approx(0.6) and head["max_error_ratio_met"]
    assert head["per_seed"] == heads
    lines = headline.spread_lines(head)
    assert "over 3 seeds" in lines[0] and "4.00x (0.00..5.00)" in lines[2] and lines[2].endswith(
        "bar >= 4x: met (interpolated: met)")
    worse = headline.claims_spread([heads[0], heads[2], heads[2]], [0, 1, 2])
    assert worse["figures"]["nfe_ratio"]["median"] == 0.0 and not worse["nfe_ratio_met"]


def test_median_rows_pool_each_setting_over_the_seeds():
    seeds = [[dict(_row("mdlm", 4, 4.0, e), family="MDLM", seed=s), dict(_row("proseco", 4, n, 0.1),
                                                                          family="P", seed=s)]
             for s, (e, n) in enumerate([(0.3, 8.0), (0.1, 7.0), (0.2, 6.0)])]
    rows = report.median_rows(seeds[:2] + [seeds[2][:1]])  # the last seed stopped after one row
    assert [(r["sampler"], r["seeds"]) for r in rows] == [("mdlm", 3), ("proseco", 2)]
    assert rows[0]["transition_error"] == pytest.approx(0.2) and rows[1]["nfe"] == pytest.approx(7.5)
    assert rows[0]["steps"] == 4 and isinstance(rows[0]["steps"], int) and "seed" not in rows[0]


def test_median_rows_leave_out_the_property_of_seeds_without_such_molecules():
    seeds = [[{"sampler": "mdlm", "family": "MDLM", "steps": 4, "corrector_steps": 0, "corrector_every": 1,
               "num_novel": n, "qed_novel_mean": q, "num_valid": 5, "qed_valid_mean": v}]
             for n, q, v in [(0, 0.0, 0.4), (3, 0.6, 0.5), (2, 0.5, 0.6)]]
    row = report.median_rows(seeds)[0]
    assert row["qed_novel_mean"] == pytest.approx(0.55)  # the seed with no novel molecule left out
    assert row["qed_valid_mean"] == pytest.approx(0.5) and row["num_novel"] == pytest.approx(2.0)
    one = report.median_rows([seeds[0], seeds[1]])[0]
    assert one["qed_novel_mean"] == pytest.approx(0.6)  # the one seed with novel molecules
    none = report.median_rows([[dict(seeds[0][0])], [dict(seeds[0][0])]])[0]
    assert none["qed_novel_mean"] == 0.0 and none["num_novel"] == 0


M = 9  # [MASK] of the history tests
HISTORY = np.array([  # one sample, T = 5, L = 4
    [M, 3, M, M],
    [5, 3, M, M],
    [5, 4, 2, M],  # position 1: 3 -> 4
    [5, 4, 2, 1],
    [6, 4, 2, 1],  # position 0: 5 -> 6
])


def _chain_allowing(*pairs):
    """A chain over M tokens whose only allowed transitions are `pairs`."""
    transition = np.zeros((M, M))
    for a, b in pairs:
        transition[a, b] = 1.0
    return markov_chain.MarkovChain(np.full(M, 1.0 / M), transition)


def test_corrections_mark_decoded_tokens_that_a_later_step_rewrote():
    first, changed = sample_metrics.corrections(HISTORY, M)
    np.testing.assert_array_equal(first, [5, 3, 2, 1])
    np.testing.assert_array_equal(changed, [True, True, False, False])
    chain = _chain_allowing((6, 4), (4, 2), (2, 1))
    assert report.marked_text(HISTORY, M, markov_scoring.MarkovScorer(chain)) == "[t5→t6] [t3→t4] t2 t1"
    scores = markov_scoring.rewrite_scores(np.stack([HISTORY, HISTORY], axis=1), chain, M)  # [T, 2, L]
    assert scores == {"rewritten": 2.0, "transition_error_first_decoded": 2 / 3}  # 5 -> 3 and 3 -> 2


def test_correction_lines_show_the_balanced_proseco_row_with_forbidden_counts_before_and_after():
    rows = [_row("mdlm", 16, 16.0, 0.1), _row("proseco", 8, 24.0, 0.1, corrector_steps=2),
            _row("proseco", 16, 48.0, 0.1, corrector_steps=2),
            _row("proseco", 64, 320.0, 0.1, corrector_steps=4, preset="max")]
    history = np.stack([HISTORY, HISTORY], axis=1)  # [T, 2, L]
    balanced = {"tokens": history[-1], "history": history, "nfe": np.array([48, 47])}
    outputs = [{}, {}, balanced, {}]
    scorer = markov_scoring.MarkovScorer(_chain_allowing((6, 4), (4, 2), (2, 1)))
    lines = report.correction_lines({"rows": rows}, outputs, scorer, M, 1)
    assert "T=16, S=2, ω=1" in lines[0] and len(lines) == 3
    assert lines[1] == ("sample 0: 2 tokens rewritten | forbidden transitions: 2 as first decoded, 0 after "
                        "correction | NFE 48")
    assert lines[2] == "[t5→t6] [t3→t4] t2 t1"
    assert report.correction_lines({"rows": rows[:1]}, outputs[:1], None, M, 3) == []


def test_bits_line_reads_the_last_validation_of_metrics_jsonl(tmp_path):
    assert "no validation figure" in report.bits_line(str(tmp_path), "model")
    records = [{"step": 10, "loss": 3.0},
               {"step": 20, "val_bits_per_token": 2.5, "data_bits_per_token": 2.0},
               {"step": 30, "val_bits_per_token": 2.25, "data_bits_per_token": 2.0},
               {"step": 40, "loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert report.validation_bits(str(tmp_path)) == {"step": 30, "val_bits_per_token": 2.25,
                                                     "data_bits_per_token": 2.0}
    assert report.bits_line(str(tmp_path), "model") == (
        "model (step 30): validation 2.2500 bits/token (an upper bound, the negative ELBO) vs the chain's "
        "entropy 2.0000 (excess +0.2500)")


def test_results_json_has_no_infinities(tmp_path):
    path = str(tmp_path / "r.json")
    fileio.atomic_write_json(path, {"rows": [{"chain_nll": math.inf, "nfe": np.float32(2.5),
                                              "steps": np.int64(4)}]})
    assert json.loads(open(path).read()) == {"rows": [{"chain_nll": None, "nfe": 2.5, "steps": 4}]}
