"""The paper's claims read off the rows of a sweep (pure functions of rows and the data reference).

(a) The NFE ProSeCo needs to reach MDLM's best quality figure: the paper reports up to ~4x fewer.
(b) At the `max` preset, ProSeCo's quality figure is ~1.2x lower than MDLM's best while its entropy
stays within 10% of the data's. The quality figure (lower is better) is the row key `quality`:
`transition_error` on the Markov language, `gen_ppl` on text. A row is a dict of `results.json`
(`sampler`, `steps`, `corrector_steps`, `corrector_every`, `preset`, `nfe`, the quality key, `entropy`).
Molecules (`molecule_claims`): ProSeCo's frontier of novel samples against their mean property, under
classifier-free guidance, up and to the right of MDLM's. Over several seeds (`claims_spread`,
`molecule_spread`) every figure is its median and range (min..max) over the seeds' own headlines, the bars
judged on the median, and guidance's effect on the valid molecules' mean property (`guidance_gain`) is met
when its gamma = 3 range lies above its gamma = 0 range.
"""

from __future__ import annotations

import math
import statistics
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


# The paper's QM9 claim: ProSeCo pushes the frontier of (novel samples out of N, novel mean property) up
# and to the right of MDLM's. A row's mean over fewer novel molecules than this is noise, not a point:
# 10 of the demo's former 128 samples per row, 7.5% of a row's samples (`min_novel`).
MIN_NOVEL = 10
MIN_NOVEL_SHARE = 0.075


def min_novel(num_samples: int) -> int:
    """The fewest novel molecules a row of `num_samples` needs to count in the frontier (10 of 128)."""
    return max(1, math.ceil(MIN_NOVEL_SHARE * num_samples))


def _frontier_count(rows: Sequence[Row], prop_key: str, target: float) -> float:
    """The most novel samples of a row whose novel mean property reaches `target` (0: none does)."""
    return max((r["num_novel"] for r in rows if r[prop_key] >= target), default=0.0)


def _frontier_property(rows: Sequence[Row], prop_key: str, count: float) -> float | None:
    """The best novel mean property of a row with at least `count` novel samples (None: none has)."""
    return max((r[prop_key] for r in rows if r["num_novel"] >= count), default=None)


def _point(row: Row, prop_key: str) -> Row:
    keys = ("sampler", "family", "steps", "corrector_steps", "corrector_every", "guidance_scale", "nfe",
            "step_nfe", "num_novel", "num_samples", prop_key)
    return {k: row[k] for k in keys if k in row}


def molecule_claims(rows: Sequence[Row], prop: str, *, baseline: str = "mdlm", method: str = "proseco",
                    min_novel: int = MIN_NOVEL) -> Row:
    """The `headline` of a molecule sweep: the two frontiers of (num_novel, `{prop}_novel_mean`) compared
    at MDLM's best point (the `baseline` row of highest novel mean property, `baseline_best`).

    (a) Equal property: `method_count` = the most novel samples of a `method` row whose novel mean
    property reaches the baseline's best, against `baseline_count`, the baseline's most at that property
    (its best row's count, or more); met when the method's is larger. (b) Equal novel count:
    `method_property` = the best novel mean property of a method row with at least the baseline best's
    novel count; met when above the baseline's best. `met`: both. Only rows with at least `min_novel`
    novel samples (by the authors' rule) count.
    """
    key = f"{prop}_novel_mean"
    usable = lambda name: [r for r in rows if r["sampler"] == name and r.get("num_novel", 0) >= min_novel
                           and r.get(key) is not None]
    base, ours = usable(baseline), usable(method)
    out: Row = {"kind": "molecules", "baseline": baseline, "method": method, "property": prop,
                "min_novel": min_novel}
    if not base or not ours:
        out["note"] = (f"needs rows of both {baseline!r} and {method!r} with at least {min_novel} novel "
                       "samples")
        return out
    best = max(base, key=lambda r: (r[key], r["num_novel"]))
    out["baseline_best"] = _point(best, key)
    out["baseline_count"] = _frontier_count(base, key, best[key])
    out["method_count"] = _frontier_count(ours, key, best[key])
    out["count_met"] = out["method_count"] > out["baseline_count"]
    out["method_property"] = _frontier_property(ours, key, best["num_novel"])
    out["property_met"] = out["method_property"] is not None and out["method_property"] > best[key]
    out["method_best"] = _point(max(ours, key=lambda r: (r[key], r["num_novel"])), key)
    out["met"] = out["count_met"] and out["property_met"]
    return out


def molecule_lines(head: Row) -> list[str]:
    """The molecule headline in words, one claim per line."""
    if "baseline_best" not in head:
        return [f"headline: {head.get('note', 'not computed')}"]
    prop, key = head["property"], f"{head['property']}_novel_mean"
    best, top = head["baseline_best"], head["method_best"]
    verdict = lambda met: "met" if met else "not met"
    describe = lambda r: (f"T={r['steps']}, S={r['corrector_steps']}, γ={r.get('guidance_scale', '-')}: "
                          f"{r['num_novel']:.0f} novel of {r['num_samples']}, novel mean {prop} {r[key]:.3f}")
    method_property = head["method_property"]
    shown = "none" if method_property is None else f"{method_property:.3f}"
    return [
        f"{head['baseline']} best novel mean {prop}: {describe(best)}",
        f"{head['method']} best novel mean {prop}: {describe(top)}",
        f"at equal {prop} (>= {best[key]:.3f}): {head['method']} {head['method_count']:.0f} novel samples vs "
        f"{head['baseline']} {head['baseline_count']:.0f} | more: {verdict(head['count_met'])}",
        f"at equal novel count (>= {best['num_novel']:.0f}): {head['method']} best novel mean {prop} "
        f"{shown} vs {head['baseline']} {best[key]:.3f} | higher: {verdict(head['property_met'])}",
        f"the paper's claim (the frontier up and to the right of {head['baseline']}'s): "
        f"{verdict(head['met'])}",
    ]


# Several seeds (`launch/demo.py --seeds`, `launch/sweep.py --seeds`): each seed's rows give one headline
# (`claims` / `molecule_claims`); every figure of it is reported as its median and range (min..max) over
# the seeds, and every bar is judged on the median.


def spread(values: Sequence[float | None]) -> Row:
    """The median and range of one figure over seeds: `values` (one per seed; None where a seed has no
    such figure, left out of the rest and counted as `missing`), `median`, `min`, `max` (None: no seed has
    it)."""
    present = [float(v) for v in values if v is not None]
    out: Row = {"values": [None if v is None else float(v) for v in values],
                "missing": len(values) - len(present)}
    if not present:
        return dict(out, median=None, min=None, max=None)
    return dict(out, median=statistics.median(present), min=min(present), max=max(present))


def _figure(head: Row, *path: str) -> float | None:
    """head[path[0]][path[1]]...; None where a level is missing or None."""
    value: Any = head
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def claims_spread(heads: Sequence[Row], seeds: Sequence[int]) -> Row:
    """The headline of several seeds from their `claims` (`heads`, one per seed of `seeds`): each figure's
    `spread` under `figures`, the bars judged on the medians, the seeds' own headlines under `per_seed`.

    Figures: the baseline's best quality and its NFE, the NFE of the method's match, `nfe_ratio` and
    `nfe_ratio_interpolated` (a seed where no method row reaches the baseline's best counts as 0x: the
    bar is not met there), and at the max preset `max_<q>_ratio` and `max_entropy_relative`.
    """
    first = heads[0]
    quality = first.get("quality", "transition_error")
    short, _ = _names(quality)
    pick = {
        f"baseline_best_{short}": lambda h: _figure(h, "baseline_best", quality),
        "baseline_best_nfe": lambda h: _figure(h, "baseline_best", "nfe"),
        "method_match_nfe": lambda h: _figure(h, "method_match", "nfe"),
        "nfe_ratio": lambda h: (h.get("nfe_ratio") or 0.0) if "baseline_best" in h else None,
        "nfe_ratio_interpolated": lambda h: ((h.get("nfe_ratio_interpolated") or 0.0)
                                             if "baseline_best" in h else None),
        f"max_{short}_ratio": lambda h: h.get(f"max_{short}_ratio"),
        "max_entropy_relative": lambda h: h.get("max_entropy_relative"),
    }
    figures = {name: spread([get(h) for h in heads]) for name, get in pick.items()}
    median = lambda name: figures[name]["median"]
    out: Row = {"seeds": list(seeds), "baseline": first["baseline"], "method": first["method"],
                "quality": quality, "nfe_ratio_bar": NFE_RATIO_BAR,
                f"max_{short}_ratio_bar": MAX_ERROR_RATIO_BAR, "max_entropy_bar": ENTROPY_BAR,
                "figures": figures, "per_seed": list(heads)}
    if median(f"baseline_best_{short}") is None:
        out["note"] = next((h["note"] for h in heads if "note" in h), "no seed has a headline")
        return out
    out["nfe_ratio_met"] = median("nfe_ratio") >= NFE_RATIO_BAR
    out["nfe_ratio_interpolated_met"] = median("nfe_ratio_interpolated") >= NFE_RATIO_BAR
    ratio, entropy = median(f"max_{short}_ratio"), median("max_entropy_relative")
    out[f"max_{short}_ratio_met"] = ratio is not None and ratio <= MAX_ERROR_RATIO_BAR
    out["max_entropy_met"] = entropy is not None and abs(entropy) <= ENTROPY_BAR
    return out


def _spread_text(s: Row, fmt: str, unit: str = "") -> str:
    """'median unit (min..max)' of a `spread`, '-' where no seed has the figure."""
    if s["median"] is None:
        return "-"
    missing = f", {s['missing']} seed(s) without" if s["missing"] else ""
    return f"{s['median']:{fmt}}{unit} ({s['min']:{fmt}}..{s['max']:{fmt}}{missing})"


def spread_lines(head: Row) -> list[str]:
    """A `claims_spread` headline in words: each figure as median (min..max over the seeds), the verdicts
    on the medians."""
    n = len(head["seeds"])
    if "note" in head:
        return [f"headline over {n} seeds: {head['note']}"]
    short, words = _names(head["quality"])
    f = head["figures"]
    verdict = lambda met: "met" if met else "not met"
    out = [f"headline over {n} seeds {head['seeds']}: median (min..max over the seeds); bars judged on the "
           "median",
           f"{head['baseline']} best: {words} {_spread_text(f[f'baseline_best_{short}'], '.4f')} at "
           f"{_spread_text(f['baseline_best_nfe'], '.1f')} NFE",
           f"{head['method']} reaches it at {_spread_text(f['method_match_nfe'], '.1f')} NFE: NFE ratio "
           f"{head['baseline']}/{head['method']} {_spread_text(f['nfe_ratio'], '.2f', 'x')} "
           f"({_spread_text(f['nfe_ratio_interpolated'], '.2f', 'x')} interpolating; a seed with no row "
           f"reaching it counts 0x) | bar >= {NFE_RATIO_BAR:g}x: {verdict(head['nfe_ratio_met'])} "
           f"(interpolated: {verdict(head['nfe_ratio_interpolated_met'])})"]
    if f[f"max_{short}_ratio"]["median"] is not None:
        out.append(f"{head['method']} max preset: {words} = {_spread_text(f[f'max_{short}_ratio'], '.3f')} x "
                   f"the {head['baseline']} best | bar <= 1/1.2: {verdict(head[f'max_{short}_ratio_met'])}")
        entropy = f["max_entropy_relative"]
        out.append(f"{head['method']} max preset: entropy {entropy['median']:+.1%} ({entropy['min']:+.1%}.."
                   f"{entropy['max']:+.1%}) vs the data | bar within {ENTROPY_BAR:.0%}: "
                   f"{verdict(head['max_entropy_met'])}")
    return out


# Guidance's effect on the property (the molecules issue's bar): the valid molecules' mean property at
# gamma = GUIDANCE_HIGH against gamma = GUIDANCE_LOW (unconditional), pooled over T per sampler.
GUIDANCE_LOW, GUIDANCE_HIGH = 0.0, 3.0


def guidance_gain(rows: Sequence[Row], prop: str, samplers: Sequence[str] = ("mdlm", "proseco"),
                  ) -> dict[str, Row]:
    """Per sampler, the mean `prop` of the valid molecules of its guided rows (the guided corrector; the
    authors' conditional one ignores gamma) at gamma = GUIDANCE_LOW (`low`) and GUIDANCE_HIGH (`high`),
    pooled over T (each row weighted by its valid molecules); None where no such row has a valid one."""
    key = f"{prop}_valid_mean"

    def pooled(sampler: str, gamma: float) -> float | None:
        members = [r for r in rows if r["sampler"] == sampler and r.get("guidance_scale") == gamma
                   and r.get("guidance_corrector", "guided") == "guided" and r.get("num_valid")
                   and r.get(key) is not None]
        total = sum(r["num_valid"] for r in members)
        return sum(r[key] * r["num_valid"] for r in members) / total if total else None

    return {s: {"low": pooled(s, GUIDANCE_LOW), "high": pooled(s, GUIDANCE_HIGH)} for s in samplers}


def molecule_spread(heads: Sequence[Row], seed_rows: Sequence[Sequence[Row]], prop: str,
                    seeds: Sequence[int]) -> Row:
    """The molecule headline of several seeds from their `molecule_claims` (`heads`) and rows
    (`seed_rows`, one list per seed of `seeds`): each frontier figure's `spread`, its bars judged on the
    medians, and guidance's effect (`guidance_gain` per seed): for the baseline and the method, the spread
    of the valid mean property at gamma = 0 and at gamma = 3, `met` when the gamma = 3 range lies above the
    gamma = 0 range (its lowest seed above the highest seed of gamma = 0); `guidance_met` when both are."""
    first = heads[0]
    key = f"{prop}_novel_mean"
    pick = {
        "baseline_best_property": lambda h: _figure(h, "baseline_best", key),
        "method_best_property": lambda h: _figure(h, "method_best", key),
        "baseline_count": lambda h: h.get("baseline_count"),
        "method_count": lambda h: h.get("method_count"),
        "method_property": lambda h: h.get("method_property"),
    }
    figures = {name: spread([get(h) for h in heads]) for name, get in pick.items()}
    median = lambda name: figures[name]["median"]
    gains = [guidance_gain(rows, prop, (first["baseline"], first["method"])) for rows in seed_rows]
    guidance: Row = {}
    for sampler in gains[0]:
        low = spread([g[sampler]["low"] for g in gains])
        high = spread([g[sampler]["high"] for g in gains])
        met = (not low["missing"] and not high["missing"] and low["max"] is not None
               and high["min"] is not None and high["min"] > low["max"])
        guidance[sampler] = {"low": low, "high": high, "met": met}
    out: Row = {"kind": "molecules", "seeds": list(seeds), "baseline": first["baseline"],
                "method": first["method"], "property": prop, "min_novel": first["min_novel"],
                "figures": figures, "guidance": guidance, "guidance_low": GUIDANCE_LOW,
                "guidance_high": GUIDANCE_HIGH,
                "guidance_met": bool(guidance) and all(g["met"] for g in guidance.values()),
                "per_seed": list(heads)}
    if median("baseline_best_property") is None or median("method_best_property") is None:
        out["note"] = next((h["note"] for h in heads if "note" in h), "no seed has a headline")
        return out
    out["count_met"] = median("method_count") > median("baseline_count")
    out["property_met"] = (median("method_property") is not None
                           and median("method_property") > median("baseline_best_property"))
    out["met"] = out["count_met"] and out["property_met"]
    return out


def molecule_spread_lines(head: Row) -> list[str]:
    """A `molecule_spread` headline in words: each figure as median (min..max over the seeds), the frontier
    judged on the medians, guidance's effect judged on the ranges."""
    n, prop = len(head["seeds"]), head["property"]
    verdict = lambda met: "met" if met else "not met"
    out = [f"headline over {n} seeds {head['seeds']}: median (min..max over the seeds)"]
    low, high = head["guidance_low"], head["guidance_high"]
    for sampler, g in head["guidance"].items():
        out.append(f"guidance, {sampler}: valid mean {prop} at γ={high:g} {_spread_text(g['high'], '.3f')} "
                   f"vs γ={low:g} {_spread_text(g['low'], '.3f')} (pooled over T) | the γ={high:g} range "
                   f"above the γ={low:g} range: {verdict(g['met'])}")
    if "note" in head:
        return out + [f"frontier: {head['note']}"]
    f = head["figures"]
    out += [
        f"{head['baseline']} best novel mean {prop}: {_spread_text(f['baseline_best_property'], '.3f')}; "
        f"{head['method']} best: {_spread_text(f['method_best_property'], '.3f')}",
        f"at equal {prop} (>= {head['baseline']}'s best): {head['method']} "
        f"{_spread_text(f['method_count'], '.0f')} novel samples vs {head['baseline']} "
        f"{_spread_text(f['baseline_count'], '.0f')} | more (medians): {verdict(head['count_met'])}",
        f"at equal novel count (>= {head['baseline']}'s best row's): {head['method']} best novel mean {prop} "
        f"{_spread_text(f['method_property'], '.3f')} | higher (medians): {verdict(head['property_met'])}",
        f"the paper's claim (the frontier up and to the right of {head['baseline']}'s, on the medians): "
        f"{verdict(head['met'])}",
    ]
    return out
