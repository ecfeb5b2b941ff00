"""Quality against compute: one trained model sampled under a grid of sampler settings, each row scored.

A `Setting` is a family label (its curve in the plot) and the config's `sampling` section with the
sampler, T steps, S corrector steps and omega changed (`Sampling.replace`); every other sampling field is
the config's (a guidance grid also sets the guidance scale and label). Each row draws `num_samples`
sequences and scores them with the sweep's scorer (a `scoring.Scorer`: against the Markov chain, gen-PPL,
entropy and MAUVE for text, RDKit's figures for molecules) next to their mean NFE per sample, the x-axis
of the paper's figures, and what the corrector rewrote. The NFE bound per sample is `Sampling.max_nfe`,
T + S ceil(T / omega). The grids: `default_grid` for the Markov language's short sequences, `text_grid`
for text (the paper's OpenWebText grid, scaled to the length), `guidance_grid` for label-conditioned
molecules (the paper's QM9 figure).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from proseco_jax import config_base, inference
from proseco_jax.evaluation import report, sample_metrics
from proseco_jax.evaluation.scoring import Scorer

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the sweep: its family label and the sampling section it runs."""

    family: str
    sampling: config_base.Sampling

    @property
    def applied(self) -> config_base.Sampling:
        """`sampling` with its preset written into (steps, corrector_every, corrector_steps); the training
        parameterization is filled in when sampling (`inference.sample_batches`), so it is left as is."""
        return self.sampling.resolved(self.sampling.parameterization)


def setting(base: config_base.Sampling, family: str, sampler: str, steps: int, corrector_steps: int = 0,
            corrector_every: int = 1) -> Setting:
    """`base` running `sampler` with T = steps, S = corrector_steps, omega = corrector_every (no preset)."""
    return Setting(family, base.replace(sampler=sampler, preset="", steps=steps,
                                        corrector_steps=corrector_steps, corrector_every=corrector_every))


def preset_setting(base: config_base.Sampling, preset: str, family: str = "") -> Setting:
    """`base` running ProSeCo at a named preset of `config_base.PRESETS` (fast, balanced, max)."""
    return Setting(family or f"ProSeCo {preset}", base.replace(sampler="proseco", preset=preset))


def default_grid(base: config_base.Sampling, length: int, *, quick: bool = False) -> list[Setting]:
    """The sweep of the demo for sequences of `length` tokens, every setting built from `base`.

    MDLM (S = 0) over T in {4, 8, 16, 32, 64} (T <= length), ReMDM at two T, ProSeCo with (S, omega) in
    {(1, 1), (2, 1), (2, 2)} over T in {4, 8, 16, 32}, and the `max` preset: 20 rows. `quick` keeps five:
    MDLM and ProSeCo (S = 2, omega = 1) at T in {4, 16}, and the `max` preset.
    """
    def upto(values: Iterable[int]) -> list[int]:
        return [t for t in values if t <= length] or [length]

    if quick:
        grid = [setting(base, "MDLM", "mdlm", t) for t in upto((4, 16))]
        grid += [setting(base, "ProSeCo S=2 ω=1", "proseco", t, 2, 1) for t in upto((4, 16))]
        return grid + [preset_setting(base, "max")]
    grid = [setting(base, "MDLM", "mdlm", t) for t in upto((4, 8, 16, 32, 64))]
    grid += [setting(base, "ReMDM", "remdm", t) for t in upto((16, 64))]
    for corrector_steps, every in ((1, 1), (2, 1), (2, 2)):
        family = f"ProSeCo S={corrector_steps} ω={every}"
        grid += [setting(base, family, "proseco", t, corrector_steps, every) for t in upto((4, 8, 16, 32))]
    return grid + [preset_setting(base, "max")]


def text_grid(base: config_base.Sampling, length: int, *, quick: bool = False) -> list[Setting]:
    """The sweep for text models of sequences of `length` tokens, every setting built from `base`.

    The paper's OpenWebText comparison scaled to the length: T in {L/8, L/4, L/2, L} (128..1024 at
    L = 1024). For L >= 512, MDLM, ReMDM and ProSeCo with the corrector after every unmasking step
    (omega = 1, as the reference's evaluation runs it) and S in {1, 2}, all at every T, and the `max`
    preset: 17 rows. Shorter sequences get a smaller grid: MDLM at every T, ReMDM at L/8 and L/2,
    ProSeCo (S = 1 and 2, omega = 1) at L/8, L/4, L/2, and the `max` preset: 13 rows. `quick` keeps five:
    MDLM and ProSeCo (S = 2, omega = 1) at L/8 and L/2, and the `max` preset.
    """
    steps = sorted({max(1, length // d) for d in (8, 4, 2, 1)})
    if quick:
        pair = sorted({steps[0], steps[-2] if len(steps) > 1 else steps[0]})
        grid = [setting(base, "MDLM", "mdlm", t) for t in pair]
        grid += [setting(base, "ProSeCo S=2 ω=1", "proseco", t, 2, 1) for t in pair]
        return grid + [preset_setting(base, "max")]
    long = length >= 512
    remdm_steps = steps if long else sorted({steps[0], steps[-2] if len(steps) > 1 else steps[0]})
    corrected_steps = steps if long else (steps[:-1] or steps)
    grid = [setting(base, "MDLM", "mdlm", t) for t in steps]
    grid += [setting(base, "ReMDM", "remdm", t) for t in remdm_steps]
    for corrector_steps in (1, 2):
        family = f"ProSeCo S={corrector_steps} ω=1"
        grid += [setting(base, family, "proseco", t, corrector_steps, 1) for t in corrected_steps]
    return grid + [preset_setting(base, "max")]


GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)  # gamma: 0 unconditional, 1 conditional, above: guided
GUIDANCE_STEPS = (32, 64, 128)  # T of the paper's QM9 figure
GUIDANCE_CORRECTOR = (2, 1)  # ProSeCo's (S, omega) in the guidance grid
GUIDED_LABEL = 1  # the high-property class (above the 90th percentile)


def guided(base: config_base.Sampling, family: str, sampler: str, steps: int, gamma: float,
           corrector_steps: int = 0, corrector_every: int = 1, label: int = GUIDED_LABEL) -> Setting:
    """`setting` steered towards class `label` with guidance scale gamma."""
    plain = setting(base, family, sampler, steps, corrector_steps, corrector_every)
    return dataclasses.replace(plain, sampling=plain.sampling.replace(guidance_scale=gamma,
                                                                      guidance_label=label))


def authors_corrector(s: Setting) -> Setting:
    """`s` with the authors' corrector under guidance (conditional only: gamma has no effect at omega = 1)."""
    return dataclasses.replace(s, family=f"{s.family} (authors')",
                               sampling=s.sampling.replace(guidance_corrector="conditional"))


def guidance_grid(base: config_base.Sampling, length: int, *, quick: bool = False) -> list[Setting]:
    """The paper's QM9 sweep, every setting built from `base` and steered towards class 1 (the high-property
    class): gamma in {0, ..., 5} x T in {32, 64, 128} x {MDLM (S = 0), ProSeCo (S = 2, omega = 1, guided
    corrector)}: 36 rows, and per T one ProSeCo row at gamma = 3 with the authors' conditional corrector
    (whose samples do not depend on gamma at omega = 1). `quick` keeps gamma in {0, 3} at T = 32. (`length`
    does not bound T here: the paper runs T up to 4x the molecules' 32 positions.)"""
    del length
    scales, steps = ((0.0, 3.0), (32,)) if quick else (GUIDANCE_SCALES, GUIDANCE_STEPS)
    corrector_steps, every = GUIDANCE_CORRECTOR
    grid = []
    for t in steps:
        grid += [guided(base, "MDLM", "mdlm", t, g) for g in scales]
        family = f"ProSeCo S={corrector_steps} ω={every}"
        grid += [guided(base, family, "proseco", t, g, corrector_steps, every) for g in scales]
        grid.append(authors_corrector(guided(base, family, "proseco", t, 3.0, corrector_steps, every)))
    return grid


# By `Scorer.kind`: a new scorer's rows need its grid.
GRIDS = {"markov": default_grid, "text": text_grid, "chemistry": guidance_grid}


def mdlm_grid(base: config_base.Sampling, length: int, *, quick: bool = False,
              kind: str = "markov") -> list[Setting]:
    """The MDLM settings of the `kind` grid (`GRIDS`), for a second, MDLM-trained model."""
    return [dataclasses.replace(s, family="MDLM (MDLM-trained)")
            for s in GRIDS[kind](base, length, quick=quick) if s.sampling.sampler == "mdlm"]


def sample_setting(loaded: Any, setting: Setting, num_samples: int, *, history: bool = False,
                   seed: int | None = None) -> dict[str, np.ndarray]:
    """num_samples draws of the loaded model under `setting`: tokens [N, L], NFE counts [N] (and
    history [T, N, L] if asked), the batches concatenated."""
    batches = list(inference.sample_batches(loaded, num_samples, settings=setting.sampling, history=history,
                                            seed=seed))
    out = {key: np.concatenate([b[key] for b in batches]) for key in batches[0] if key != "history"}
    if history:
        out["history"] = np.concatenate([b["history"] for b in batches], axis=1)
    return out


def evaluate_setting(loaded: Any, setting: Setting, scorer: Scorer, num_samples: int, *,
                     sampler_label: str | None = None, seed: int | None = None,
                     ) -> tuple[Row, dict[str, np.ndarray]]:
    """Samples one setting (with its history; `seed`: the sampling seed, default the config's) and scores
    it: (a row of `results.json`, the samples)."""
    start = time.time()
    out = sample_setting(loaded, setting, num_samples, history=True, seed=seed)
    run = setting.applied
    row: Row = {
        "sampler": sampler_label or run.sampler,
        "family": setting.family,
        "steps": run.steps,
        "corrector_steps": run.num_corrector_steps,
        "corrector_every": run.corrector_every,
        "preset": setting.sampling.preset,
    }
    row.update(sample_metrics.nfe_means(out))
    if run.guidance_label >= 0:  # A guided row: its gamma, label and the authors' NFE (a guided call once)
        row.update(guidance_scale=run.guidance_scale, guidance_label=run.guidance_label,
                   guidance_corrector=run.guidance_corrector, step_nfe=float(np.mean(out["step_nfe"])))
    row.update(scorer.score(out["tokens"]))
    row.update(scorer.rewrites(out["history"], loaded.config.mask_id))
    row["num_samples"] = int(out["tokens"].shape[0])
    row["seconds"] = time.time() - start
    return row, out


def run_sweep(loaded: Any, grid: Sequence[Setting], scorer: Scorer, num_samples: int, *,
              sampler_label: str | None = None, seed: int | None = None, workers: int = 2,
              progress: Callable[[str], None] | None = print,
              stop: Callable[[], bool] | None = None,
              ) -> tuple[list[Row], list[dict[str, np.ndarray]]]:
    """`evaluate_setting` for every setting of the grid under sampling seed `seed` (default: the config's),
    a progress line per row: (rows, samples).

    Every setting compiles its own sampler, and XLA compiles on one core: `workers` threads let one
    setting compile while another samples. Rows come back in grid order and do not depend on `workers`.
    Once `stop()` is true no further setting starts: the rows finished by then come back.
    """

    def one(i: int) -> tuple[Row, dict[str, np.ndarray]] | None:
        if stop is not None and stop():
            return None
        row, out = evaluate_setting(loaded, grid[i], scorer, num_samples, sampler_label=sampler_label,
                                    seed=seed)
        if progress is not None:
            progress(f"[{i + 1}/{len(grid)}] {report.row_summary(row, scorer)}")
        return row, out

    # Longest first (by the NFE bound), so no long row runs alone at the end.
    order = sorted(range(len(grid)), key=lambda i: -grid[i].applied.max_nfe)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        done = dict(zip(order, pool.map(one, order)))
    finished = [done[i] for i in range(len(grid)) if done[i] is not None]
    return [row for row, _ in finished], [out for _, out in finished]
