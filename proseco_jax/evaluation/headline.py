"""The paper's two claims read off the rows of a sweep (pure functions of rows and the data reference).

(a) The NFE ProSeCo needs to reach MDLM's best quality figure: the paper reports up to ~4x fewer.
(b) At the `max` preset, ProSeCo's quality figure is ~1.2x lower than MDLM's best while its entropy
stays within 10% of the data's. The quality figure (lower is better) is the row key `quality`:
`transition_error` on the Markov language, `gen_ppl` on text. A row is a dict of `results.json`
(`sampler`, `steps`, `corrector_steps`, `corrector_every`, `preset`, `nfe`, the quality key, `entropy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]
NFE_RATIO_BAR = 4.0  # ProSeCo reaches MDLM's best quality figure with at least 4x fewer NFE.
MAX_ERROR_RATIO_BAR = 1.0 / 1.2  # At the max preset: ProSeCo's figure <= MDLM's best / 1.2.
ENTROPY_BAR = 0.10  # At the max preset: entropy within 10% of the data's.
# Quality key -> (its short name in the headline's keys, in words).
QUALITY_NAMES = {"transition_error": ("error", "transition error"), "gen_ppl": ("gen_ppl", "gen-PPL")}


def _names(quality: str) -> tuple[str, str]:
    return QUALITY_NAMES.get(quality, (quality, quality))


def _pareto(rows: Sequence[Row], quality: str) -> list[Row]:
    """Rows on the lower envelope of (nfe, quality): each lower in `quality` than all cheaper rows."""
    front: list[Row] = []
    for row in sorted(rows, key=lambda r: (r["nfe"], r[quality])):
        if not front or row[quality] < front[-1][quality]:
            front.append(row)
    return front


def _interpolated_nfe(rows: Sequence[Row], target: float, quality: str) -> float | None:
    """NFE at which the rows' lower envelope first reaches `target`, linear in NFE between rows."""
    front = _pareto(rows, quality)
    for i, row in enumerate(front):
        if row[quality] <= target:
            if i == 0:
                return float(row["nfe"])  # no extrapolation below the cheapest row
            prev = front[i - 1]
            frac = (prev[quality] - target) / (prev[quality] - row[quality])
            return float(prev["nfe"] + frac * (row["nfe"] - prev["nfe"]))
    return None


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 0.0 if numerator == 0 else math.inf
    return numerator / denominator


def _brief(row: Row, quality: str) -> Row:
    keys = ("sampler", "steps", "corrector_steps", "corrector_every", "preset", "nfe", quality, "entropy")
    return {k: row[k] for k in keys if k in row}


def claims(rows: Sequence[Row], data: Row, *, baseline: str = "mdlm", method: str = "proseco",
           max_preset: str = "max", quality: str = "transition_error") -> Row:
    """The `headline` of `results.json`, read on the row key `quality` (lower is better).

    (a) `baseline_best`: the `baseline` row (by `sampler`) of lowest `quality`; `method_match`: the
    cheapest `method` row reaching it, `nfe_ratio` = baseline NFE / its NFE (bar >= 4);
    `nfe_ratio_interpolated` uses the NFE where the method's lower envelope (rows no cheaper row beats)
    crosses the target, linear in NFE between neighbouring rows. (b) At the `max_preset` row of `method`:
    `max_<q>_ratio` = its figure / the baseline's best (bar <= 1/1.2; <q> is `error` for the transition
    error, `gen_ppl` for gen-PPL) and `max_entropy_relative` = its entropy / the data's - 1 (bar: |.| <=
    0.1). Missing figures are None and a bar not met is reported as not met; rows without `quality` (text
    scored without an evaluator) give a `note` only.
    """
    short, _ = _names(quality)
    base = [r for r in rows if r["sampler"] == baseline and r.get(quality) is not None]
    ours = [r for r in rows if r["sampler"] == method and r.get(quality) is not None]
    out: Row = {"baseline": baseline, "method": method, "quality": quality, "nfe_ratio_bar": NFE_RATIO_BAR,
                f"max_{short}_ratio_bar": MAX_ERROR_RATIO_BAR, "max_entropy_bar": ENTROPY_BAR}
    if not base or not ours:
        out["note"] = f"needs rows of both {baseline!r} and {method!r} with {quality!r}"
        return out
    best = min(base, key=lambda r: (r[quality], r["nfe"]))
    target = best[quality]
    out["baseline_best"] = _brief(best, quality)
    reaching = [r for r in ours if r[quality] <= target]
    match = min(reaching, key=lambda r: (r["nfe"], r[quality])) if reaching else None
    out["method_match"] = _brief(match, quality) if match else None
    out["nfe_ratio"] = _ratio(best["nfe"], match["nfe"]) if match else None
    interpolated = _interpolated_nfe(ours, target, quality)
    out["method_match_nfe_interpolated"] = interpolated
    out["nfe_ratio_interpolated"] = _ratio(best["nfe"], interpolated) if interpolated else None
    out["nfe_ratio_met"] = bool(match) and out["nfe_ratio"] >= NFE_RATIO_BAR
    out["nfe_ratio_interpolated_met"] = bool(interpolated) and out["nfe_ratio_interpolated"] >= NFE_RATIO_BAR
    top = [r for r in ours if r.get("preset") == max_preset]
    if top:
        row = top[0]
        out["max_preset"] = _brief(row, quality)
        out[f"max_{short}_ratio"] = _ratio(row[quality], target)
        out[f"max_{short}_ratio_met"] = out[f"max_{short}_ratio"] <= MAX_ERROR_RATIO_BAR
        out["max_entropy_relative"] = row["entropy"] / data["entropy"] - 1.0
        out["max_entropy_met"] = abs(out["max_entropy_relative"]) <= ENTROPY_BAR
    else:
        out["max_preset"] = None
    return out


def lines(head: Row) -> list[str]:
    """The headline in words, one claim per line."""
    if "baseline_best" not in head:
        return [f"headline: {head.get('note', 'not computed')}"]
    quality = head.get("quality", "transition_error")
    short, words = _names(quality)
    best, match = head["baseline_best"], head["method_match"]
    verdict = lambda met: "met" if met else "not met"
    out = [f"{head['baseline']} best: {words} {best[quality]:.4f} at {best['nfe']:.1f} NFE "
           f"(T={best['steps']})"]
    if match is None:
        out.append(f"{head['method']}: no row reaches that {words} (bar: >= {NFE_RATIO_BAR:g}x fewer NFE: "
                   "not met)")
    else:
        interp = head["nfe_ratio_interpolated"]
        out.append(
            f"{head['method']} reaches it at {match['nfe']:.1f} NFE (T={match['steps']}, "
            f"S={match['corrector_steps']}, ω={match['corrector_every']}): NFE ratio {head['baseline']}/"
            f"{head['method']} {head['nfe_ratio']:.2f}x ({interp:.2f}x interpolating along its lower "
            f"envelope) | bar >= {NFE_RATIO_BAR:g}x: {verdict(head['nfe_ratio_met'])} "
            f"(interpolated: {verdict(head['nfe_ratio_interpolated_met'])})")
    top = head.get("max_preset")
    if top:
        ratio = head[f"max_{short}_ratio"]
        out.append(
            f"{head['method']} max preset: {words} {top[quality]:.4f} at {top['nfe']:.1f} NFE = "
            f"{ratio:.3f} x the {head['baseline']} best (best / this = {_ratio(1.0, ratio):.2f}x) | "
            f"bar <= 1/1.2: {verdict(head[f'max_{short}_ratio_met'])}")
        out.append(
            f"{head['method']} max preset: entropy {top['entropy']:.3f} nats, "
            f"{head['max_entropy_relative']:+.1%} vs the data | bar within {ENTROPY_BAR:.0%}: "
            f"{verdict(head['max_entropy_met'])}")
    return out
