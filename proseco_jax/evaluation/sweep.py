"""The sweep of a trained workdir: the grid of samplers (`grid`), each row scored by the corpus's scorer
(`scoring.make_scorer`: against the Markov chain, or gen-PPL / entropy / MAUVE for text) with held-out
data scored the same way as the reference row (`reference_row`), the paper's claims read off the rows
(`headline`), and `results.json` with its plot (`report`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from proseco_jax import checkpoint, config_base, fileio, inference
from proseco_jax.data import datasets
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import grid, headline, report, sample_metrics, scoring
from proseco_jax.stopping import StopRequest

Row = dict[str, Any]
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
                   seeds: int = 1, seed_workdirs: Sequence[str] | None = None,
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

    `seeds` > 1 samples the whole grid under sampling seeds config.seed, config.seed + 1, ...: seed k draws
    from the model of `seed_workdirs[k]` (one training per seed, same config and shapes) when given, else
    from `workdir`'s. results.json then holds each seed's rows (with their `seed`), model and headline under
    `per_seed`, one row per setting with its median over the seeds under `rows` (`report.median_rows`,
    what the table and the plot show), and under `headline` every figure's median and range over the
    seeds' headlines (`headline.claims_spread` / `headline.molecule_spread`), the bars judged on the median.
    Writes output_dir/results.json and output_dir/quality_vs_nfe.png; returns (the results, the samples
    of each row of the first seed: tokens [N, L], history [T, N, L], NFE counts).
    """
    config = config_base.resolve(config)
    check_request(config, num_samples, evaluator_dir)
    models = list(seed_workdirs) if seed_workdirs else [workdir] * seeds
    if seeds < 1 or len(models) != seeds:
        raise UsageError(f"the number of seeds must be positive and match its workdirs, got {seeds} seeds "
                         f"and {len(models)} workdirs")
    checkpoint.ensure_writable(output_dir, "output directory")
    data = datasets.load(config.data)
    scorer = scoring.make_scorer(config, data, evaluator_dir)
    molecules = scorer.kind == "chemistry"
    if num_data is None:
        num_data = 1000 if scorer.kind == "markov" else num_samples
    length = config.data.length
    reference = reference_row(scorer, data, num_data)
    progress(report.data_summary(reference, scorer))
    loaded = inference.load_model(config, models[0])
    mdlm_model = inference.load_model(config, mdlm_workdir) if mdlm_workdir else None
    settings = grid.GRIDS[scorer.kind](config.sampling, length, quick=quick)
    mdlm_settings = grid.mdlm_grid(config.sampling, length, quick=quick, kind=scorer.kind)

    def claims(rows: list[Row], baseline: str) -> dict[str, Any]:
        if molecules:
            return headline.molecule_claims(rows, config.data.label_property, baseline=baseline,
                                            min_novel=headline.min_novel(num_samples))
        return headline.claims(rows, reference, baseline=baseline, quality=scorer.quality)

    per_seed: list[dict[str, Any]] = []
    first_outputs: list[dict[str, np.ndarray]] = []
    with StopRequest("the rows being sampled") as stop:
        for k in range(seeds):
            if k and stop.requested:
                break
            seed = config.seed + k
            # Another seed's training of the same config: restored onto the first model, whose compiled
            # samplers it reuses.
            model = loaded if models[k] == models[0] else inference.load_model(config, models[k], like=loaded)
            of_seed = f", sampling seed {seed}" if seeds > 1 else ""
            progress(f"sampling the model of {models[k]} (step {model.step}){of_seed}: {num_samples} samples "
                     "per row")
            rows, outputs = grid.run_sweep(model, settings, scorer, num_samples, progress=progress,
                                           seed=seed, stop=lambda: stop.requested)
            head = claims(rows, "mdlm")
            if mdlm_model is not None and not stop.requested:
                progress(f"sampling the MDLM-trained model of {mdlm_workdir} (step {mdlm_model.step})")
                more_rows, more_outputs = grid.run_sweep(mdlm_model, mdlm_settings, scorer, num_samples,
                                                         sampler_label=MDLM_TRAINED, progress=progress,
                                                         seed=seed)
                rows, outputs = rows + more_rows, outputs + more_outputs
                head["vs_mdlm_trained"] = claims(rows, MDLM_TRAINED)
            if k == 0:
                first_outputs = outputs
            per_seed.append({"seed": seed, "rows": rows, "headline": head,
                             "model": {"workdir": os.path.abspath(models[k]), "step": model.step,
                                       **report.validation_bits(models[k])}})
    # A seed a stop cut short would count its missing rows against the claims: the headline pools the seeds
    # that finished, and results.json keeps the cut one's rows apart.
    per_row = len(settings) + (len(mdlm_settings) if mdlm_model is not None else 0)
    finished = [p for p in per_seed if len(p["rows"]) == per_row] or per_seed
    results = {"scorer": scorer.kind, "quality": scorer.quality, "data": reference,
               **_combined(finished, config.data.label_property if molecules else None)}
    if len(finished) < len(per_seed):
        results["unfinished_seeds"] = [p for p in per_seed if p not in finished]
    if scorer.kind == "text":
        results["evaluator_dir"] = os.path.abspath(evaluator_dir) if evaluator_dir else None
    done = sum(len(p["rows"]) for p in per_seed)
    total = seeds * per_row
    if stop.requested:  # Keep what was sampled: the rows finished before the stop.
        results["interrupted"] = f"{done} of {total} rows"
    json_path = os.path.join(output_dir, "results.json")
    png_path = os.path.join(output_dir, "novel_vs_property.png" if molecules else "quality_vs_nfe.png")
    fileio.atomic_write_json(json_path, results)
    report.plot(results, scorer, png_path)
    several = "per_seed" in results  # not when a stop came before the second seed
    if several:
        progress(f"each figure of the table: its median over the {len(finished)} seeds")
    progress(report.format_table(results["rows"], reference, scorer))
    head = results["headline"]
    describe = _describe(molecules, several)
    for line in describe(head) + (describe(head["vs_mdlm_trained"]) if "vs_mdlm_trained" in head else []):
        progress(line)
    progress(f"wrote {json_path} and {png_path}")
    if stop.requested:
        progress(f"{stop.signal_name}: stopped after {done} of {total} rows (in results.json); "
                 "rerun the same command to sample every row")
    return results, first_outputs


def _describe(molecules: bool, several: bool) -> Callable[[dict[str, Any]], list[str]]:
    """The headline's lines: of one seed's claims or of their spread, for molecules or quality vs NFE."""
    if several:
        return headline.molecule_spread_lines if molecules else headline.spread_lines
    return headline.molecule_lines if molecules else headline.lines


def _combined(per_seed: list[dict[str, Any]], prop: str | None) -> dict[str, Any]:
    """`rows`, `headline` and `model` of results.json from the sweeps of each seed (`prop`: the molecules'
    property, None for quality against NFE): one seed's own, or for several the median rows, the spread
    headline and the first seed's model, with every seed's under `per_seed` (its rows marked `seed`)."""
    if len(per_seed) == 1:
        only = per_seed[0]
        return {"rows": only["rows"], "headline": only["headline"], "model": only["model"]}
    seeds = [p["seed"] for p in per_seed]
    for p in per_seed:
        for row in p["rows"]:
            row["seed"] = p["seed"]
    heads = [p["headline"] for p in per_seed]

    def spread(key: str | None) -> dict[str, Any]:
        these = [h[key] for h in heads] if key else heads
        if prop is None:
            return headline.claims_spread(these, seeds)
        return headline.molecule_spread(these, [p["rows"] for p in per_seed], prop, seeds)

    head = spread(None)
    if all("vs_mdlm_trained" in h for h in heads):
        head["vs_mdlm_trained"] = spread("vs_mdlm_trained")
    return {"rows": report.median_rows([p["rows"] for p in per_seed]), "headline": head,
            "model": per_seed[0]["model"], "per_seed": per_seed}
