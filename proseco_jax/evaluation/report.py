"""What a sweep shows: the table of rows, the quality-against-NFE plot, samples with the tokens the
corrector rewrote marked `[tA→tB]` (text: `[a→b]` in decoded characters or tokens), and the model's
validation bits per token. How a row's metrics read comes from the sweep's `scoring.Scorer` (its
columns, quality figure, rendering of tokens), which every function here is given.

`results.json` (written by `fileio.atomic_write_json`, non-finite numbers as null) is `{"scorer": kind,
"quality": key, "data": {...}, "rows": [...], "headline": {...}, "model": {...}}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from proseco_jax.evaluation import sample_metrics
from proseco_jax.evaluation.scoring import Scorer

Row = dict[str, Any]


def banner(text: str) -> str:
    """A section title of the demo's output."""
    return f"\n=== {text}"


def row_summary(row: Row, scorer: Scorer) -> str:
    """One row on one line, as the sweep reports its progress (`scorer` renders its metrics)."""
    metrics = scorer.summary(row)
    return (f"{row['family']:<22} T={row['steps']:<3} NFE {row['nfe']:6.1f} | {metrics} | "
            f"{row['seconds']:.1f} s")


def data_summary(data: Row, scorer: Scorer) -> str:
    """The held-out data reference on one line."""
    return f"data (held out, {data['num_samples']} sequences): {scorer.data_summary(data)}"


def format_table(rows: Sequence[Row], data: Row | None, scorer: Scorer) -> str:
    """A fixed-width table of the rows (and the data reference first), with the scorer's columns; a
    column no row has is left out, a missing figure is '-'."""
    columns = [c for c in scorer.columns if any(c[0] in r for r in [*rows, data or {}])]
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


def _support(key: str) -> str | None:
    """The count of molecules a chemistry statistic is taken over (`qed_novel_mean` -> `num_novel`)."""
    for subset in ("valid", "novel"):
        if f"_{subset}_" in key and not key.startswith("num_"):
            return f"num_{subset}"
    return None


def median_rows(seed_rows: Sequence[Sequence[Row]]) -> list[Row]:
    """One row per setting from the rows of several seeds (one list per seed, each in grid order; an
    interrupted seed may lack its last settings): every number the median over the seeds that have the
    setting (a number all seeds share stays as it is), every other field the first seed's, and `seeds`
    how many seeds it pools. A statistic over the valid or the novel molecules of a seed that drew none
    (`*_valid_*`, `*_novel_*` where `num_valid` / `num_novel` is 0, recorded as 0) is left out of its median.
    """
    shape = lambda r: (r["sampler"], r["family"], r["steps"], r["corrector_steps"], r["corrector_every"],
                       r.get("preset"), r.get("guidance_scale"), r.get("guidance_corrector"))
    settings: dict[tuple, list[Row]] = {}
    for rows in seed_rows:
        for row in rows:
            settings.setdefault(shape(row), []).append(row)
    out = []
    for members in settings.values():
        row = {k: v for k, v in members[0].items() if k != "seed"}
        row["seeds"] = len(members)
        for key, value in row.items():
            count = _support(key)
            numbers = [m.get(key) for m in members if count is None or m.get(count, 1) > 0] or [value]
            if (isinstance(value, (int, float)) and not isinstance(value, bool) and None not in numbers
                    and set(numbers) != {value}):
                row[key] = float(np.median(numbers))
        out.append(row)
    return out


def plot(results: dict[str, Any], scorer: Scorer, path: str) -> None:
    """Two panels against mean NFE (log x): the scorer's quality figure and entropy, one curve per family;
    a molecule sweep (`guidance_plot`) draws the paper's guidance figure instead.

    A `Figure` without pyplot: no GUI backend is chosen or needed, and a notebook's own is left alone.
    """
    if results.get("scorer") == "chemistry":
        guidance_plot(results, results["headline"]["property"], path)
        return
    rows, data = results["rows"], results["data"]
    quality = scorer.quality
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
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
    ylabels = (scorer.quality_label, "unigram entropy per sample (nats)")
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xscale("log")
        ax.set_xlabel("mean NFE per sample")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    if scorer.quality_log_scale and (mdlm or data.get(quality) is not None):
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


def guidance_plot(results: dict[str, Any], prop: str, path: str) -> None:
    """The paper's QM9 figure and validity: (left) novel samples out of N (x) against their mean `prop`
    (y), one curve per sampler family and T through its guidance scales, marker area growing with gamma,
    the held-out data's mean as a line; (right) validity against gamma, the same curves."""
    rows, data = results["rows"], results["data"]
    key = f"{prop}_novel_mean"
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    curves: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        curves.setdefault((row["family"], row["steps"]), []).append(row)
    for (family, steps), members in curves.items():
        members = sorted(members, key=lambda r: r.get("guidance_scale", 0.0))
        gammas = np.asarray([r.get("guidance_scale", 0.0) for r in members])
        style = "--" if "MDLM" in family else "-"
        label = f"{family} T={steps}"
        line = axes[0].plot([r["num_novel"] for r in members], [r[key] for r in members], style, label=label)
        color = line[0].get_color()
        axes[0].scatter([r["num_novel"] for r in members], [r[key] for r in members], s=15 + 25 * gammas,
                        color=color)
        axes[1].plot(gammas, [r["validity"] for r in members], style, marker="o", color=color, label=label)
    if data.get(f"{prop}_valid_mean") is not None:
        axes[0].axhline(data[f"{prop}_valid_mean"], color="black", linewidth=1, label="data (held out)")
    num = max((r["num_samples"] for r in rows), default=0)
    axes[0].set_xlabel(f"novel samples out of {num}")
    axes[0].set_ylabel(f"mean {prop} of the novel samples")
    axes[0].set_title("guidance frontier (marker size: γ): up and right is better")
    axes[1].set_xlabel("guidance scale γ")
    axes[1].set_ylabel("validity")
    axes[1].set_title("valid molecules against γ")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def _shown(scorer: Scorer, first: int, final: int) -> bool:
    """Whether a rewrite first -> final shows in the rendered sample: one between two tokens that render
    alike (a molecule's pad -> eos: both are no atom) changes nothing a reader sees, so it is not marked."""
    return scorer.render(int(first)) != scorer.render(int(final))


def marked_text(history: np.ndarray, mask_id: int, scorer: Scorer, per_line: int | None = 16) -> str:
    """One sample's final tokens as the scorer renders them, rewritten ones marked by `scorer.mark`
    (`[tA→tB]`: first decoded → final) unless both render alike (`_shown`); `per_line` tokens a line
    (None: one string, the text's own line breaks).

    history: int [T, L] of one sample.
    """
    first, changed = sample_metrics.corrections(history, mask_id)
    final = np.asarray(history)[-1]
    words = [scorer.mark(int(a), int(b)) if c and _shown(scorer, a, b) else scorer.render(int(b))
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


def correction_lines(results: dict[str, Any], outputs: Sequence[dict[str, np.ndarray]], scorer: Scorer,
                     mask_id: int, count: int) -> list[str]:
    """`count` samples of a ProSeCo row with every token a corrector step rewrote marked, and the
    scorer's note on each (Markov: forbidden transitions before and after correction); no line when
    there is no such row.

    outputs: the samples of each row of `results["rows"]` (tokens [N, L], history [T, N, L], nfe [N]).
    """
    rows = results["rows"]
    pick = _corrected_row(rows)
    if count <= 0 or pick is None:
        return []
    row, out = rows[pick], outputs[pick]
    first, changed = sample_metrics.corrections(out["history"], mask_id)  # [N, L]
    lines = [banner(f"ProSeCo samples (T={row['steps']}, S={row['corrector_steps']}, "
                    f"ω={row['corrector_every']}): {scorer.mark_legend}")]
    text = scorer.kind != "markov"
    for i in range(min(count, out["tokens"].shape[0])):
        note = scorer.sample_note(first[i], out["tokens"][i])
        hidden = sum(not _shown(scorer, a, b) for a, b, c in zip(first[i], out["tokens"][i], changed[i]) if c)
        unseen = f" ({hidden} between tokens that render alike, not marked)" if hidden else ""
        lines.append(f"sample {i}: {int(changed[i].sum())} tokens rewritten{unseen} | "
                     + (f"{note} | " if note else "") + f"NFE {int(out['nfe'][i])}")
        lines.append(marked_text(out["history"][:, i], mask_id, scorer, None if text else 16))
    return lines


def sample_lines(results: dict[str, Any], outputs: Sequence[dict[str, np.ndarray]], scorer: Scorer,
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


def validation_bits(workdir: str) -> dict[str, float | None]:
    """The last `val_bits_per_token` of workdir/metrics.jsonl with its step and the data's entropy (None
    where the figure was not finite: `fileio` writes it as null)."""
    path = os.path.join(workdir, "metrics.jsonl")
    out: dict[str, float | None] = {}
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
    if value is None:
        return f"{label} (step {bits['step']}): the validation bits per token was not finite"
    line = (f"{label} (step {bits['step']}): validation {value:.4f} bits/token (an upper bound, the "
            "negative ELBO)")
    if "data_bits_per_token" in bits:
        line += (f" vs the chain's entropy {bits['data_bits_per_token']:.4f} "
                 f"(excess {value - bits['data_bits_per_token']:+.4f})")
    if unigram_bits is not None:
        line += (f" vs the unigram entropy of its training tokens {unigram_bits:.4f} "
                 f"({value - unigram_bits:+.4f}, {value / unigram_bits:.1%} of it)")
    return line
