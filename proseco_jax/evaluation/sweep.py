"""The sweep of a trained workdir: the grid of samplers (`grid`), scored against the Markov chain with
held-out data as the reference (`scoring`), the paper's claims read off the rows (`headline`), and
`results.json` with its plot (`report`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from proseco_jax import checkpoint, config_base
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import grid, headline, report, scoring
from proseco_jax.stopping import StopRequest

MDLM_TRAINED = "mdlm (MDLM-trained)"  # the sampler label of the rows of a model trained without corrector


def check_request(config: Any, num_samples: int) -> None:
    """Raises UsageError unless a sweep of `num_samples` per row can run on `config` (a `Config` or the
    ConfigDict a binary is about to fill with `num_samples`), before any work."""
    if config.data.name != "markov":
        raise UsageError("the sweep scores samples against the Markov chain (data.name='markov'), got "
                         f"{config.data.name!r}")
    if num_samples < 1:
        raise UsageError(f"the number of samples per row must be positive, got {num_samples}")


def sweep_workdirs(config: Any, workdir: str, output_dir: str, *, num_samples: int, quick: bool = False,
                   mdlm_workdir: str | None = None, num_data: int = 1000,
                   progress: Callable[[str], None] = print
                   ) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """The whole sweep of a trained workdir: rows, data reference, headline, results.json and the PNG.

    `mdlm_workdir` (a model of the same config trained with corrector.enabled=False) adds its MDLM rows
    under sampler "mdlm (MDLM-trained)" and a second headline against them (`headline["vs_mdlm_trained"]`).
    Writes output_dir/results.json and output_dir/quality_vs_nfe.png; returns (the results, the samples
    of each row: tokens [N, L], history [T, N, L], NFE counts).
    """
    from proseco_jax import inference
    from proseco_jax.data import chain as markov_chain
    from proseco_jax.data import datasets

    config = config_base.resolve(config)
    check_request(config, num_samples)
    checkpoint.ensure_writable(output_dir, "output directory")
    data = datasets.load(config.data)
    chain = markov_chain.load_chain(data.chain_path)
    length = config.data.length
    reference = scoring.data_reference(scoring.held_out_tokens(data.sources["validation"], num_data), chain,
                                       length)
    progress(report.data_summary(reference))
    loaded = inference.load_model(config, workdir)
    progress(f"sampling the model of {workdir} (step {loaded.step}): {num_samples} samples per row")
    settings = grid.default_grid(config.sampling, length, quick=quick)
    with StopRequest("the rows being sampled") as stop:
        rows, outputs = grid.run_sweep(loaded, settings, chain, num_samples, progress=progress,
                                       stop=lambda: stop.requested)
    head = headline.claims(rows, reference)
    if mdlm_workdir and not stop.requested:
        mdlm_model = inference.load_model(config, mdlm_workdir)
        progress(f"sampling the MDLM-trained model of {mdlm_workdir} (step {mdlm_model.step})")
        mdlm_settings = grid.mdlm_grid(config.sampling, length, quick=quick)
        more_rows, more_outputs = grid.run_sweep(mdlm_model, mdlm_settings, chain, num_samples,
                                                 sampler_label=MDLM_TRAINED, progress=progress)
        rows, outputs = rows + more_rows, outputs + more_outputs
        head["vs_mdlm_trained"] = headline.claims(rows, reference, baseline=MDLM_TRAINED)
    results = {"data": reference, "rows": rows, "headline": head,
               "model": {"workdir": os.path.abspath(workdir), "step": loaded.step,
                         **report.validation_bits(workdir)}}
    if stop.requested:  # Keep what was sampled: the rows finished before the stop.
        results["interrupted"] = f"{len(rows)} of {len(settings)} rows"
    json_path = os.path.join(output_dir, "results.json")
    png_path = os.path.join(output_dir, "quality_vs_nfe.png")
    report.write_json(json_path, results)
    report.plot(results, png_path)
    progress(report.format_table(rows, reference))
    for line in headline.lines(head) + (headline.lines(head["vs_mdlm_trained"]) if mdlm_workdir else []):
        progress(line)
    progress(f"wrote {json_path} and {png_path}")
    if stop.requested:
        progress(f"{stop.signal_name}: stopped after {len(rows)} of {len(settings)} rows (in results.json); "
                 "rerun the same command to sample every row")
    return results, outputs
