"""The sweep of a trained workdir: the grid of samplers (`grid`), each row scored by the corpus's scorer
(`scoring.make_scorer`: against the Markov chain, or gen-PPL / entropy / MAUVE for text) with held-out
data scored the same way as the reference row (`reference_row`), the paper's claims read off the rows
(`headline`), and `results.json` with its plot (`report`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from proseco_jax import checkpoint, config_base, fileio, inference
from proseco_jax.data import datasets
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import grid, headline, report, sample_metrics, scoring
from proseco_jax.stopping import StopRequest

MDLM_TRAINED = "mdlm (MDLM-trained)"  # the sampler label of the rows of a model trained without corrector
UNIGRAM_SEQUENCES = 50_000  # training sequences read for the unigram baseline (all of a small corpus)


def check_request(config: Any, num_samples: int, evaluator_dir: str | None = None, *,
                  need_evaluator: bool = False) -> None:
    """Raises UsageError unless a sweep of `num_samples` per row can run on `config` (a `Config` or the
    ConfigDict a binary is about to fill with `num_samples`), before any work.

    Text corpora are scored under the GPT-2 of `evaluator_dir` (`need_evaluator`: it must be given);
    the Markov language is scored against its chain and takes no evaluator.
    """
    if num_samples < 1:
        raise UsageError(f"the number of samples per row must be positive, got {num_samples}")
    if config.data.name == "markov":
        if evaluator_dir:
            raise UsageError("--evaluator_dir scores text; the Markov language (data.name='markov') is "
                             "scored against its chain")
        return
    if config.data.name == "qm9":
        if evaluator_dir:
            raise UsageError("--evaluator_dir scores text; molecules (data.name='qm9') are scored by RDKit")
        return
    if evaluator_dir and not os.path.isdir(evaluator_dir):
        raise UsageError(f"--evaluator_dir {evaluator_dir} is not a directory (a local Hugging Face GPT-2: "
                         "config.json, model.safetensors, tokenizer.json)")
    if need_evaluator and not evaluator_dir:
        raise UsageError(f"a sweep of text (data.name={config.data.name!r}) scores gen-PPL under an "
                         "evaluator: pass --evaluator_dir, a local Hugging Face GPT-2 directory")


def reference_row(scorer: scoring.Scorer, data: Any, num_data: int) -> dict[str, Any]:
    """The `data` row of results.json: the first `num_data` validation sequences of the loaded corpus
    `data` scored by `scorer`, with the unigram entropy of the training tokens in bits per token
    (`unigram_bits_per_token`, over at most UNIGRAM_SEQUENCES sequences, `unigram_tokens` of them)."""
    reference = scorer.reference(scoring.held_out_tokens(data.sources["validation"], num_data))
    bits, count = sample_metrics.unigram_bits(scoring.split_tokens(data.sources["train"], UNIGRAM_SEQUENCES))
    reference.update(unigram_bits_per_token=bits, unigram_tokens=count)
    return reference


def sweep_workdirs(config: Any, workdir: str, output_dir: str, *, num_samples: int, quick: bool = False,
                   mdlm_workdir: str | None = None, num_data: int | None = None,
                   evaluator_dir: str | None = None, progress: Callable[[str], None] = print,
                   ) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """The whole sweep of a trained workdir: rows, data reference, headline, results.json and the PNG.

    The corpus picks the scorer and the grid: the Markov language is scored against its chain
    (`grid.default_grid`); molecules by RDKit under the guidance grid (`grid.guidance_grid`; the headline
    `headline.molecule_claims`, the plot novel_vs_property.png in place of quality_vs_nfe.png); text by
    gen-PPL under the GPT-2 of `evaluator_dir` (without one: entropy only, and no headline), entropy and
    MAUVE (`grid.text_grid`). `num_data` held-out sequences are the
    reference (default: 1000 for the Markov language, `num_samples` for text, whose scoring is costlier).
    `mdlm_workdir` (a model of the same config trained with corrector.enabled=False) adds its MDLM rows
    under sampler "mdlm (MDLM-trained)" and a second headline against them (`headline["vs_mdlm_trained"]`).
    Writes output_dir/results.json and output_dir/quality_vs_nfe.png; returns (the results, the samples
    of each row: tokens [N, L], history [T, N, L], NFE counts).
    """
    config = config_base.resolve(config)
    check_request(config, num_samples, evaluator_dir)
    checkpoint.ensure_writable(output_dir, "output directory")
    data = datasets.load(config.data)
    scorer = scoring.make_scorer(config, data, evaluator_dir)
    molecules = scorer.kind == "chemistry"
    if num_data is None:
        num_data = 1000 if scorer.kind == "markov" else num_samples
    length = config.data.length
    reference = reference_row(scorer, data, num_data)
    progress(report.data_summary(reference, scorer))
    loaded = inference.load_model(config, workdir)
    progress(f"sampling the model of {workdir} (step {loaded.step}): {num_samples} samples per row")
    settings = grid.GRIDS[scorer.kind](config.sampling, length, quick=quick)
    with StopRequest("the rows being sampled") as stop:
        rows, outputs = grid.run_sweep(loaded, settings, scorer, num_samples, progress=progress,
                                       stop=lambda: stop.requested)
    def claims(baseline: str) -> dict[str, Any]:
        if molecules:
            return headline.molecule_claims(rows, config.data.label_property, baseline=baseline)
        return headline.claims(rows, reference, baseline=baseline, quality=scorer.quality)

    describe = headline.molecule_lines if molecules else headline.lines
    head = claims("mdlm")
    if mdlm_workdir and not stop.requested:
        mdlm_model = inference.load_model(config, mdlm_workdir)
        progress(f"sampling the MDLM-trained model of {mdlm_workdir} (step {mdlm_model.step})")
        mdlm_settings = grid.mdlm_grid(config.sampling, length, quick=quick, kind=scorer.kind)
        more_rows, more_outputs = grid.run_sweep(mdlm_model, mdlm_settings, scorer, num_samples,
                                                 sampler_label=MDLM_TRAINED, progress=progress)
        rows, outputs = rows + more_rows, outputs + more_outputs
        head["vs_mdlm_trained"] = claims(MDLM_TRAINED)
    results = {"scorer": scorer.kind, "quality": scorer.quality, "data": reference, "rows": rows,
               "headline": head, "model": {"workdir": os.path.abspath(workdir), "step": loaded.step,
                                           **report.validation_bits(workdir)}}
    if scorer.kind == "text":
        results["evaluator_dir"] = os.path.abspath(evaluator_dir) if evaluator_dir else None
    if stop.requested:  # Keep what was sampled: the rows finished before the stop.
        results["interrupted"] = f"{len(rows)} of {len(settings)} rows"
    json_path = os.path.join(output_dir, "results.json")
    png_path = os.path.join(output_dir, "novel_vs_property.png" if molecules else "quality_vs_nfe.png")
    fileio.atomic_write_json(json_path, results)
    report.plot(results, scorer, png_path)
    progress(report.format_table(rows, reference, scorer))
    for line in describe(head) + (describe(head["vs_mdlm_trained"]) if mdlm_workdir else []):
        progress(line)
    progress(f"wrote {json_path} and {png_path}")
    if stop.requested:
        progress(f"{stop.signal_name}: stopped after {len(rows)} of {len(settings)} rows (in results.json); "
                 "rerun the same command to sample every row")
    return results, outputs
