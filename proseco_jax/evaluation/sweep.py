"""Quality against compute: one trained model sampled under a grid of sampler settings, each row scored.

A row is one `Setting` (sampler, T steps, S corrector steps, corrector every omega steps) drawn
`num_samples` times and scored against the Markov chain (`markov_metrics`: transition error, validity,
chain NLL, entropy) next to its mean NFE per sample, the x-axis of the paper's figures. Held-out data
scored the same way is the reference (transition error 0, the data's entropy). `headline` turns the rows
into the two claims of the paper: the NFE ProSeCo needs to reach MDLM's best transition error (the paper:
up to ~4x fewer), and at the `max` preset how much lower ProSeCo's error is than MDLM's best (~1.2x)
while its entropy stays within 10% of the data's. `corrections` reads a sampling history [T, L] and finds
the decoded tokens that a corrector step later rewrote. Results are written as `results.json`
(`{"data": {...}, "rows": [...], "headline": {...}}`) and drawn as one PNG.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from proseco_jax.evaluation import markov_metrics
from proseco_jax.sampling import settings as sampler_settings

Row = dict[str, Any]
NFE_RATIO_BAR = 4.0  # ProSeCo reaches MDLM's best transition error with at least 4x fewer NFE.
MAX_ERROR_RATIO_BAR = 1.0 / 1.2  # At the max preset: ProSeCo's error <= MDLM's best / 1.2.
ENTROPY_BAR = 0.10  # At the max preset: entropy within 10% of the data's.


@dataclasses.dataclass(frozen=True)
class Setting:
    """One sampler configuration of the sweep; `family` names its curve in the plot and the table."""

    family: str
    sampler: str
    steps: int
    corrector_steps: int = 0
    corrector_every: int = 1
    preset: str = ""
    extra: tuple[tuple[str, Any], ...] = ()  # further `config.sampling` fields, e.g. (("remdm_eta", 0.05),)

    @property
    def max_nfe(self) -> int:
        """NFE bound per sample: T + S ceil(T / omega) (S = 0 for MDLM)."""
        corrector = 0 if self.sampler == "mdlm" else self.corrector_steps
        return self.steps + corrector * -(-self.steps // self.corrector_every)

    def sampling_fields(self) -> dict[str, Any]:
        """The `config.sampling` fields this setting sets (a preset is resolved into explicit numbers)."""
        fields = {"sampler": self.sampler, "steps": self.steps, "corrector_steps": self.corrector_steps,
                  "corrector_every": self.corrector_every, "preset": ""}
        fields.update(dict(self.extra))
        return fields


def preset_setting(preset: str, family: str = "") -> Setting:
    """The ProSeCo setting of a named preset of `sampling/settings.py` (fast, balanced, max)."""
    steps, every, corrector_steps = sampler_settings.PRESETS[preset]
    return Setting(family or f"ProSeCo {preset}", "proseco", steps, corrector_steps, every, preset=preset)


def default_grid(length: int, *, quick: bool = False) -> list[Setting]:
    """The sweep of the demo for sequences of `length` tokens.

    MDLM (S = 0) over T in {4, 8, 16, 32, 64} (T <= length), ReMDM at two T, ProSeCo with (S, omega) in
    {(1, 1), (2, 1), (2, 2)} over T in {4, 8, 16, 32}, and the `max` preset: 20 rows. `quick` keeps five:
    MDLM and ProSeCo (S = 2, omega = 1) at T in {4, 16}, and the `max` preset.
    """
    def upto(values: Iterable[int]) -> list[int]:
        return [t for t in values if t <= length] or [length]

    if quick:
        grid = [Setting("MDLM", "mdlm", t) for t in upto((4, 16))]
        grid += [Setting("ProSeCo S=2 ω=1", "proseco", t, 2, 1) for t in upto((4, 16))]
        return grid + [preset_setting("max")]
    grid = [Setting("MDLM", "mdlm", t) for t in upto((4, 8, 16, 32, 64))]
    grid += [Setting("ReMDM", "remdm", t) for t in upto((16, 64))]
    for corrector_steps, every in ((1, 1), (2, 1), (2, 2)):
        family = f"ProSeCo S={corrector_steps} ω={every}"
        grid += [Setting(family, "proseco", t, corrector_steps, every) for t in upto((4, 8, 16, 32))]
    return grid + [preset_setting("max")]


def mdlm_grid(length: int, *, quick: bool = False) -> list[Setting]:
    """The MDLM settings of `default_grid`, for a second, MDLM-trained model."""
    return [dataclasses.replace(s, family="MDLM (MDLM-trained)")
            for s in default_grid(length, quick=quick) if s.sampler == "mdlm"]


def markov_scores(tokens: np.ndarray, chain: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """`markov_metrics` of int tokens [N, L] against chain = (initial [V], transition [V, V])."""
    return markov_metrics.markov_metrics(tokens, *chain)


def nfe_means(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean NFE per sample (total, predictor, corrector) of arrays [N] keyed as the sampler names them."""
    return {key: float(np.mean(outputs[key])) for key in ("nfe", "predictor_nfe", "corrector_nfe")
            if key in outputs}


def data_reference(tokens: np.ndarray, chain: tuple[np.ndarray, np.ndarray], length: int) -> Row:
    """The metrics of held-out data tokens [N, L], and the chain's exact entropy per token."""
    row: Row = dict(markov_scores(tokens, chain), num_samples=int(tokens.shape[0]))
    nats = markov_metrics.chain_entropy_per_token(*chain, length)
    row["chain_entropy_nats_per_token"] = nats
    row["chain_entropy_bits_per_token"] = nats / math.log(2.0)
    return row


def held_out_tokens(source: Any, num: int) -> np.ndarray:
    """The first min(num, len(source)) sequences of a random-access split: int32 [N, L]."""
    num = min(int(num), len(source))
    return np.stack([np.asarray(source[i]["tokens"]) for i in range(num)]).astype(np.int32)


def sample_setting(config: Any, loaded: Any, setting: Setting, num_samples: int, *,
                   history: bool = False, seed: int | None = None) -> dict[str, np.ndarray]:
    """Draws num_samples with `setting` applied to a copy of `config.sampling`; arrays concatenated."""
    from proseco_jax import inference

    run_config = config.copy_and_resolve_references()
    for key, value in setting.sampling_fields().items():
        run_config.sampling[key] = value
    batches = list(inference.sample_batches(run_config, loaded, num_samples, history=history, seed=seed))
    out = {key: np.concatenate([b[key] for b in batches]) for key in batches[0] if key != "history"}
    if history:
        out["history"] = np.concatenate([b["history"] for b in batches], axis=1)  # [T, N, L]
    return out


def evaluate_setting(config: Any, loaded: Any, setting: Setting, chain: tuple[np.ndarray, np.ndarray],
                     num_samples: int, *, sampler_label: str | None = None
                     ) -> tuple[Row, dict[str, np.ndarray]]:
    """Samples one setting (with its history) and scores it: (a row of `results.json`, the samples).

    Besides the chain metrics, a row has `rewritten`, the mean number of positions per sample whose final
    token differs from the token first decoded there, and `transition_error_first_decoded`, the
    transition error of the sequence made of each position's first decoded token (for samplers that never
    rewrite, the transition error itself).
    """
    start = time.time()
    out = sample_setting(config, loaded, setting, num_samples, history=True)
    row: Row = {
        "sampler": sampler_label or setting.sampler,
        "family": setting.family,
        "steps": setting.steps,
        "corrector_steps": 0 if setting.sampler == "mdlm" else setting.corrector_steps,
        "corrector_every": setting.corrector_every,
        "preset": setting.preset,
    }
    row.update(nfe_means(out))
    row.update(markov_scores(out["tokens"], chain))
    first, changed = corrections(out["history"], int(config.data.vocab_size))
    row["rewritten"] = float(changed.sum(axis=1).mean())
    row["transition_error_first_decoded"] = forbidden_count(first, chain[1]) / first[:, 1:].size
    row["num_samples"] = int(out["tokens"].shape[0])
    row["seconds"] = time.time() - start
    return row, out


def run_sweep(config: Any, loaded: Any, grid: Sequence[Setting], chain: tuple[np.ndarray, np.ndarray],
              num_samples: int, *, sampler_label: str | None = None, workers: int = 2,
              progress: Callable[[str], None] | None = print
              ) -> tuple[list[Row], list[dict[str, np.ndarray]]]:
    """`evaluate_setting` for every setting of the grid, a progress line per row: (rows, samples).

    Every setting compiles its own sampler, and XLA compiles on one core: `workers` threads let one
    setting compile while another samples. Rows come back in grid order and do not depend on `workers`.
    """
    def one(i: int) -> tuple[Row, dict[str, np.ndarray]]:
        row, out = evaluate_setting(config, loaded, grid[i], chain, num_samples, sampler_label=sampler_label)
        if progress is not None:
            progress(f"[{i + 1}/{len(grid)}] {row['family']:<22} T={row['steps']:<3} "
                     f"NFE {row['nfe']:6.1f} | transition error {row['transition_error']:.4f} "
                     f"(as first decoded {row['transition_error_first_decoded']:.4f}) | "
                     f"entropy {row['entropy']:.3f} | {row['seconds']:.1f} s")
        return row, out

    # Longest first (by the NFE bound T + S ceil(T / omega)), so no long row runs alone at the end.
    order = sorted(range(len(grid)), key=lambda i: -grid[i].max_nfe)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        done = dict(zip(order, pool.map(one, order)))
    return [done[i][0] for i in range(len(grid))], [done[i][1] for i in range(len(grid))]


def _pareto(rows: Sequence[Row]) -> list[Row]:
    """Rows on the lower envelope of (nfe, transition_error): each lower in error than all cheaper rows."""
    front: list[Row] = []
    for row in sorted(rows, key=lambda r: (r["nfe"], r["transition_error"])):
        if not front or row["transition_error"] < front[-1]["transition_error"]:
            front.append(row)
    return front


def _interpolated_nfe(rows: Sequence[Row], target: float) -> float | None:
    """NFE at which the ProSeCo lower envelope first reaches `target` error, linear in NFE between rows."""
    front = _pareto(rows)
    for i, row in enumerate(front):
        if row["transition_error"] <= target:
            if i == 0:
                return float(row["nfe"])  # no extrapolation below the cheapest row
            prev = front[i - 1]
            frac = (prev["transition_error"] - target) / (prev["transition_error"] - row["transition_error"])
            return float(prev["nfe"] + frac * (row["nfe"] - prev["nfe"]))
    return None


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 0.0 if numerator == 0 else math.inf
    return numerator / denominator


def _brief(row: Row) -> Row:
    keys = ("sampler", "steps", "corrector_steps", "corrector_every", "preset", "nfe", "transition_error",
            "entropy")
    return {k: row[k] for k in keys if k in row}


def headline(rows: Sequence[Row], data: Row, *, baseline: str = "mdlm", method: str = "proseco",
             max_preset: str = "max") -> Row:
    """The paper's two claims read off the rows (a pure function of rows and the data reference).

    (a) `baseline_best`: the `baseline` row (by `sampler`) of lowest transition error; `method_match`: the
    cheapest `method` row reaching that error, `nfe_ratio` = baseline NFE / its NFE (bar >= 4);
    `nfe_ratio_interpolated` uses the NFE where the method's lower envelope (rows no cheaper row beats)
    crosses the target, linear in NFE between neighbouring rows. (b) At the `max_preset` row of `method`:
    `max_error_ratio` = its transition error / the baseline's best (bar <= 1/1.2) and
    `max_entropy_relative` = its entropy / the data's - 1 (bar: |.| <= 0.1). Missing figures are None and
    a bar not met is reported as not met.
    """
    base = [r for r in rows if r["sampler"] == baseline]
    ours = [r for r in rows if r["sampler"] == method]
    out: Row = {"baseline": baseline, "method": method, "nfe_ratio_bar": NFE_RATIO_BAR,
                "max_error_ratio_bar": MAX_ERROR_RATIO_BAR, "max_entropy_bar": ENTROPY_BAR}
    if not base or not ours:
        out["note"] = f"needs rows of both {baseline!r} and {method!r}"
        return out
    best = min(base, key=lambda r: (r["transition_error"], r["nfe"]))
    target = best["transition_error"]
    out["baseline_best"] = _brief(best)
    reaching = [r for r in ours if r["transition_error"] <= target]
    match = min(reaching, key=lambda r: (r["nfe"], r["transition_error"])) if reaching else None
    out["method_match"] = _brief(match) if match else None
    out["nfe_ratio"] = _ratio(best["nfe"], match["nfe"]) if match else None
    interpolated = _interpolated_nfe(ours, target)
    out["method_match_nfe_interpolated"] = interpolated
    out["nfe_ratio_interpolated"] = _ratio(best["nfe"], interpolated) if interpolated else None
    out["nfe_ratio_met"] = bool(match) and out["nfe_ratio"] >= NFE_RATIO_BAR
    out["nfe_ratio_interpolated_met"] = bool(interpolated) and out["nfe_ratio_interpolated"] >= NFE_RATIO_BAR
    top = [r for r in ours if r.get("preset") == max_preset]
    if top:
        row = top[0]
        out["max_preset"] = _brief(row)
        out["max_error_ratio"] = _ratio(row["transition_error"], target)
        out["max_error_ratio_met"] = out["max_error_ratio"] <= MAX_ERROR_RATIO_BAR
        out["max_entropy_relative"] = row["entropy"] / data["entropy"] - 1.0
        out["max_entropy_met"] = abs(out["max_entropy_relative"]) <= ENTROPY_BAR
    else:
        out["max_preset"] = None
    return out


def headline_lines(head: Row) -> list[str]:
    """The headline in words, one claim per line."""
    if "baseline_best" not in head:
        return [f"headline: {head.get('note', 'not computed')}"]
    best, match = head["baseline_best"], head["method_match"]
    verdict = lambda met: "met" if met else "not met"
    lines = [f"{head['baseline']} best: transition error {best['transition_error']:.4f} at "
             f"{best['nfe']:.1f} NFE (T={best['steps']})"]
    if match is None:
        lines.append(f"{head['method']}: no row reaches that error (bar: >= {NFE_RATIO_BAR:g}x fewer NFE: "
                     "not met)")
    else:
        interp = head["nfe_ratio_interpolated"]
        lines.append(
            f"{head['method']} reaches it at {match['nfe']:.1f} NFE (T={match['steps']}, "
            f"S={match['corrector_steps']}, ω={match['corrector_every']}): NFE ratio {head['baseline']}/"
            f"{head['method']} {head['nfe_ratio']:.2f}x ({interp:.2f}x interpolating along its lower "
            f"envelope) | bar >= {NFE_RATIO_BAR:g}x: {verdict(head['nfe_ratio_met'])} "
            f"(interpolated: {verdict(head['nfe_ratio_interpolated_met'])})")
    top = head.get("max_preset")
    if top:
        gain = _ratio(1.0, head["max_error_ratio"])
        lines.append(
            f"{head['method']} max preset: transition error {top['transition_error']:.4f} at "
            f"{top['nfe']:.1f} NFE = {head['max_error_ratio']:.3f} x the {head['baseline']} best "
            f"(best / this = {gain:.2f}x) | bar <= 1/1.2: {verdict(head['max_error_ratio_met'])}")
        lines.append(
            f"{head['method']} max preset: entropy {top['entropy']:.3f} nats, "
            f"{head['max_entropy_relative']:+.1%} vs the data | bar within {ENTROPY_BAR:.0%}: "
            f"{verdict(head['max_entropy_met'])}")
    return lines


def format_table(rows: Sequence[Row], data: Row | None = None) -> str:
    """A fixed-width table of the rows (and the data reference first)."""
    header = (f"{'sampler':<22} {'family':<22} {'T':>3} {'S':>2} {'ω':>2} {'NFE':>7} {'trans.err':>9} "
              f"{'valid':>6} {'chainNLL':>8} {'entropy':>7} {'rewritten':>9}")
    lines = [header, "-" * len(header)]
    if data is not None:
        lines.append(f"{'data (held out)':<22} {'':<22} {'':>3} {'':>2} {'':>2} {'':>7} "
                     f"{data['transition_error']:9.4f} {data['validity']:6.3f} {data['chain_nll']:8.4f} "
                     f"{data['entropy']:7.3f}")
    for r in rows:
        lines.append(f"{r['sampler']:<22} {r['family']:<22} {r['steps']:>3} {r['corrector_steps']:>2} "
                     f"{r['corrector_every']:>2} {r['nfe']:7.1f} {r['transition_error']:9.4f} "
                     f"{r['validity']:6.3f} {r['chain_nll']:8.4f} {r['entropy']:7.3f} "
                     f"{r.get('rewritten', 0.0):9.2f}")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """JSON has no inf/NaN: they become null."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes `payload` as indented JSON, atomically (a partial file never appears under `path`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(payload), f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def plot(results: dict[str, Any], path: str) -> None:
    """Two panels against mean NFE (log x): transition error and entropy, one curve per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, data = results["rows"], results["data"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    families: dict[str, list[Row]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    for name, members in families.items():
        members = sorted(members, key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in members]
        if len(members) == 1:
            style = dict(marker="*", markersize=14, linestyle="none")
        else:  # baselines dashed, ProSeCo solid
            style = dict(marker="o", linestyle="--" if "MDLM" in name or "ReMDM" in name else "-")
        for ax, key in zip(axes, ("transition_error", "entropy")):
            ax.plot(nfe, [r[key] for r in members], label=name, **style)
    axes[0].axhline(data["transition_error"], color="black", linewidth=1, label="data (held out)")
    mdlm = [r["transition_error"] for r in rows if r["sampler"] == "mdlm"]
    if mdlm:
        axes[0].axhline(min(mdlm), color="grey", linestyle=":", linewidth=1, label="MDLM's best")
    axes[1].axhline(data["entropy"], color="black", linewidth=1, label="data (held out)")
    ylabels = ("transition error (fraction forbidden)", "unigram entropy per sample (nats)")
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xscale("log")
        ax.set_xlabel("mean NFE per sample")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("quality: lower is better")
    axes[1].set_title("diversity: the data's is the target")
    axes[0].legend(fontsize=7, loc="upper right")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def corrections(history: np.ndarray, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens as first decoded and where a later step rewrote them, from history int [T, ..., L].

    Returns (first int [..., L]: each position's token at the first step it was not [MASK], or mask_id
    if it never was; changed bool [..., L]: the final token differs from the first decoded one).
    """
    history = np.asarray(history)
    decoded = history != mask_id
    first_step = np.argmax(decoded, axis=0)  # [..., L]
    first = np.take_along_axis(history, first_step[None], axis=0)[0]
    first = np.where(decoded.any(axis=0), first, mask_id)
    final = history[-1]
    changed = (first != mask_id) & (final != mask_id) & (final != first)
    return first, changed


def marked_text(history: np.ndarray, mask_id: int, per_line: int = 16) -> str:
    """One sample's final tokens as `tN`, with rewritten ones as `[tA→tB]` (first decoded → final).

    history: int [T, L] of one sample.
    """
    first, changed = corrections(history, mask_id)
    final = np.asarray(history)[-1]
    words = [f"[t{a}→t{b}]" if c else f"t{b}" for a, b, c in zip(first, final, changed)]
    return "\n".join(" ".join(words[i : i + per_line]) for i in range(0, len(words), per_line))


def forbidden_count(tokens: np.ndarray, transition: np.ndarray) -> int:
    """Forbidden transitions in int tokens [..., L] (ids outside the chain count as forbidden)."""
    tokens = np.asarray(tokens)
    vocab = transition.shape[0]
    a, b = tokens[..., :-1], tokens[..., 1:]
    inside = (a < vocab) & (b < vocab)
    allowed = transition[np.minimum(a, vocab - 1), np.minimum(b, vocab - 1)] > 0
    return int((~(inside & allowed)).sum())


def validation_bits(workdir: str) -> dict[str, float]:
    """The last `val_bits_per_token` of workdir/metrics.jsonl with its step and the data's entropy."""
    path = os.path.join(workdir, "metrics.jsonl")
    out: dict[str, float] = {}
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line) if line.strip() else {}
            if "val_bits_per_token" in record:
                out = {"step": record["step"], "val_bits_per_token": record["val_bits_per_token"]}
                if "data_bits_per_token" in record:
                    out["data_bits_per_token"] = record["data_bits_per_token"]
    return out


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
    from proseco_jax.data import datasets

    data = datasets.load(config.data)
    chain = markov_metrics.load_chain_npz(data.chain_path)
    length = int(config.data.length)
    reference = data_reference(held_out_tokens(data.sources["validation"], num_data), chain, length)
    progress(f"data (held out, {reference['num_samples']} sequences): transition error "
             f"{reference['transition_error']:.4f} | entropy {reference['entropy']:.3f} nats | chain NLL "
             f"{reference['chain_nll']:.4f} (chain entropy {reference['chain_entropy_nats_per_token']:.4f})")
    loaded = inference.load_model(config, workdir)
    progress(f"sampling the model of {workdir} (step {loaded.step}): {num_samples} samples per row")
    rows, outputs = run_sweep(config, loaded, default_grid(length, quick=quick), chain, num_samples,
                              progress=progress)
    head = headline(rows, reference)
    if mdlm_workdir:
        label = "mdlm (MDLM-trained)"
        mdlm_model = inference.load_model(config, mdlm_workdir)
        progress(f"sampling the MDLM-trained model of {mdlm_workdir} (step {mdlm_model.step})")
        more_rows, more_outputs = run_sweep(config, mdlm_model, mdlm_grid(length, quick=quick), chain,
                                            num_samples, sampler_label=label, progress=progress)
        rows, outputs = rows + more_rows, outputs + more_outputs
        head["vs_mdlm_trained"] = headline(rows, reference, baseline=label)
    results = {"data": reference, "rows": rows, "headline": head,
               "model": {"workdir": os.path.abspath(workdir), "step": loaded.step,
                         **validation_bits(workdir)}}
    write_json(os.path.join(output_dir, "results.json"), results)
    plot(results, os.path.join(output_dir, "quality_vs_nfe.png"))
    progress(format_table(rows, reference))
    for line in headline_lines(head):
        progress(line)
    if "vs_mdlm_trained" in head:
        for line in headline_lines(head["vs_mdlm_trained"]):
            progress(line)
    progress(f"wrote {os.path.join(output_dir, 'results.json')} and "
             f"{os.path.join(output_dir, 'quality_vs_nfe.png')}")
    return results, outputs
