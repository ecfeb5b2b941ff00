"""What a sweep shows: the table of rows, `results.json`, the quality-against-NFE plot, samples with the
tokens the corrector rewrote marked `[tA→tB]` (text: `[a→b]` in decoded characters or tokens), and the
model's validation bits per token. How a row's metrics read comes from the sweep's scorer
(`scoring.MarkovScorer` by default, `scoring.TextScorer` for text).

`results.json` is `{"scorer": "markov" | "text", "quality": key, "data": {...}, "rows": [...],
"headline": {...}, "model": {...}}`; JSON has no inf or NaN, so they are written as null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from proseco_jax.evaluation import scoring

Row = dict[str, Any]


def banner(text: str) -> str:
    """A section title of the demo's output."""
    return f"\n=== {text}"


def row_summary(row: Row, scorer: Any = None) -> str:
    """One row on one line, as the sweep reports its progress (`scorer` renders its metrics; default:
    the Markov language's)."""
    metrics = (scorer or scoring.MarkovScorer()).summary(row)
    return (f"{row['family']:<22} T={row['steps']:<3} NFE {row['nfe']:6.1f} | {metrics} | "
            f"{row['seconds']:.1f} s")


def data_summary(data: Row, scorer: Any = None) -> str:
    """The held-out data reference on one line."""
    if scorer is None or scorer.kind == "markov":
        return (f"data (held out, {data['num_samples']} sequences): transition error "
                f"{data['transition_error']:.4f} | entropy {data['entropy']:.3f} nats | chain NLL "
                f"{data['chain_nll']:.4f} (chain entropy {data['chain_entropy_nats_per_token']:.4f})")
    line = f"data (held out, {data['num_samples']} sequences): {scorer.summary(data)} nats"
    if "unigram_bits_per_token" in data:
        line += f" | unigram entropy of the training tokens {data['unigram_bits_per_token']:.4f} bits/token"
    return line


def format_table(rows: Sequence[Row], data: Row | None = None, scorer: Any = None) -> str:
    """A fixed-width table of the rows (and the data reference first), with the scorer's columns
    (default: the Markov language's); a column no row has is left out, a missing figure is '-'."""
    columns = (scorer or scoring.MarkovScorer()).columns
    columns = [c for c in columns if any(c[0] in r for r in [*rows, data or {}])]
    columns.append(("rewritten", "rewritten", ".2f"))
    width = lambda header: max(len(header), 6)
    cell = lambda r, key, fmt, header: (f"{r[key]:{width(header)}{fmt}}" if r.get(key) is not None
                                        else f"{'-':>{width(header)}}")
    header = (f"{'sampler':<22} {'family':<22} {'T':>4} {'S':>2} {'ω':>2} {'NFE':>7} "
              + " ".join(f"{h:>{width(h)}}" for _, h, _ in columns))
    lines = [header, "-" * len(header)]
    if data is not None:
        lines.append(f"{'data (held out)':<22} {'':<22} {'':>4} {'':>2} {'':>2} {'':>7} "
                     + " ".join(cell(data, k, f, h) if k != "rewritten" else " " * width(h)
                                for k, h, f in columns))
    for r in rows:
        lines.append(f"{r['sampler']:<22} {r['family']:<22} {r['steps']:>4} {r['corrector_steps']:>2} "
                     f"{r['corrector_every']:>2} {r['nfe']:7.1f} "
                     + " ".join(cell(r, k, f, h) for k, h, f in columns))
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """JSON has no inf/NaN: they become null; numpy scalars become Python numbers."""
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
    """Two panels against mean NFE (log x): the quality figure (`results["quality"]`: transition error,
    or gen-PPL on a log axis) and entropy, one curve per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, data = results["rows"], results["data"]
    quality = results.get("quality", "transition_error")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    families: dict[str, list[Row]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    for name, members in families.items():
        members = sorted(members, key=lambda r: r["nfe"])
        if len(members) == 1:
            style = dict(marker="*", markersize=14, linestyle="none")
        else:  # baselines dashed, ProSeCo solid
            style = dict(marker="o", linestyle="--" if "MDLM" in name or "ReMDM" in name else "-")
        for ax, key in zip(axes, (quality, "entropy")):
            points = [(r["nfe"], r[key]) for r in members if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=name, **style)
    if data.get(quality) is not None:
        axes[0].axhline(data[quality], color="black", linewidth=1, label="data (held out)")
    mdlm = [r[quality] for r in rows if r["sampler"] == "mdlm" and r.get(quality) is not None]
    if mdlm:
        axes[0].axhline(min(mdlm), color="grey", linestyle=":", linewidth=1, label="MDLM's best")
    axes[1].axhline(data["entropy"], color="black", linewidth=1, label="data (held out)")
    text = quality == "gen_ppl"
    ylabels = ("gen-PPL under the evaluator" if text else "transition error (fraction forbidden)",
               "unigram entropy per sample (nats)")
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xscale("log")
        ax.set_xlabel("mean NFE per sample")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    if text and (mdlm or data.get(quality) is not None):
        axes[0].set_yscale("log")
    if not any(r.get(quality) is not None for r in rows):
        axes[0].text(0.5, 0.5, f"no {quality} (no evaluator)", ha="center", transform=axes[0].transAxes)
    axes[0].set_title("quality: lower is better")
    axes[1].set_title("diversity: the data's is the target")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def marked_text(history: np.ndarray, mask_id: int, per_line: int | None = 16, scorer: Any = None) -> str:
    """One sample's final tokens as the scorer renders them (default: `tN`), rewritten ones marked by
    `scorer.mark` (`[tA→tB]`: first decoded → final); `per_line` tokens a line (None: one string, the
    text's own line breaks).

    history: int [T, L] of one sample.
    """
    scorer = scorer or scoring.MarkovScorer()
    first, changed = scoring.corrections(history, mask_id)
    final = np.asarray(history)[-1]
    words = [scorer.mark(int(a), int(b)) if c else scorer.render(int(b))
             for a, b, c in zip(first, final, changed)]
    if per_line is None:
        return scorer.separator.join(words)
    return "\n".join(scorer.separator.join(words[i : i + per_line]) for i in range(0, len(words), per_line))


def _corrected_row(rows: Sequence[Row]) -> int | None:
    """The ProSeCo row the demo shows: the `balanced` preset's settings (T=16, S=2, omega=1) if the grid
    has them, else the first ProSeCo row that is not a preset; None when there is none."""
    candidates = [i for i, r in enumerate(rows) if r["sampler"] == "proseco" and not r["preset"]]
    shape = lambda r: (r["steps"], r["corrector_steps"], r["corrector_every"])
    return ([i for i in candidates if shape(rows[i]) == (16, 2, 1)] or candidates or [None])[0]


def correction_lines(results: dict[str, Any], outputs: Sequence[dict[str, np.ndarray]], scorer: Any,
                     mask_id: int, count: int) -> list[str]:
    """`count` samples of a ProSeCo row with every token a corrector step rewrote marked, and the
    scorer's note on each (Markov: forbidden transitions before and after correction); no line when
    there is no such row.

    scorer: a `scoring.Scorer` (a `MarkovChain` is scored as its `MarkovScorer`).
    outputs: the samples of each row of `results["rows"]` (tokens [N, L], history [T, N, L], nfe [N]).
    """
    scorer = scoring.as_scorer(scorer)
    rows = results["rows"]
    pick = _corrected_row(rows)
    if count <= 0 or pick is None:
        return []
    row, out = rows[pick], outputs[pick]
    first, changed = scoring.corrections(out["history"], mask_id)  # [N, L]
    lines = [banner(f"ProSeCo samples (T={row['steps']}, S={row['corrector_steps']}, "
                    f"ω={row['corrector_every']}): {scorer.mark_legend}")]
    text = scorer.kind != "markov"
    for i in range(min(count, out["tokens"].shape[0])):
        note = scorer.sample_note(first[i], out["tokens"][i])
        lines.append(f"sample {i}: {int(changed[i].sum())} tokens rewritten | "
                     + (f"{note} | " if note else "") + f"NFE {int(out['nfe'][i])}")
        lines.append(marked_text(out["history"][:, i], mask_id, None if text else 16, scorer))
    return lines


def sample_lines(results: dict[str, Any], outputs: Sequence[dict[str, np.ndarray]], scorer: Any,
                 sampler: str, count: int) -> list[str]:
    """`count` decoded samples of the `sampler` row with as many unmasking steps as the row
    `correction_lines` shows (else the sampler's first row): plain text to read next to the marked ones."""
    rows = results["rows"]
    pick = _corrected_row(rows)
    steps = rows[pick]["steps"] if pick is not None else None
    candidates = [i for i, r in enumerate(rows) if r["sampler"] == sampler and not r["preset"]]
    if count <= 0 or not candidates:
        return []
    i = ([c for c in candidates if rows[c]["steps"] == steps] or candidates)[0]
    lines = [banner(f"{sampler.upper()} samples (T={rows[i]['steps']}, {rows[i]['nfe']:.0f} NFE)")]
    for n, tokens in enumerate(outputs[i]["tokens"][:count]):
        lines.append(f"sample {n}:")
        lines.append(scorer.separator.join(scorer.render(int(t)) for t in tokens))
    return lines


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


def bits_line(workdir: str, label: str, unigram_bits: float | None = None) -> str:
    """The model's last validation bits per token against the chain's entropy (Markov language) and
    against `unigram_bits`, the unigram entropy of its training tokens (what ignoring context reaches)."""
    bits = validation_bits(workdir)
    if "val_bits_per_token" not in bits:
        return f"{label}: no validation figure in {workdir}/metrics.jsonl"
    value = bits["val_bits_per_token"]
    line = (f"{label} (step {bits['step']}): validation {value:.4f} bits/token (an upper bound, the "
            "negative ELBO)")
    if "data_bits_per_token" in bits:
        line += (f" vs the chain's entropy {bits['data_bits_per_token']:.4f} "
                 f"(excess {value - bits['data_bits_per_token']:+.4f})")
    if unigram_bits is not None:
        line += (f" vs the unigram entropy of its training tokens {unigram_bits:.4f} "
                 f"({value - unigram_bits:+.4f}, {value / unigram_bits:.1%} of it)")
    return line
