"""What a sweep shows: the table of rows, `results.json`, the quality-against-NFE plot, samples with the
tokens the corrector rewrote marked `[tA→tB]`, and the model's validation bits per token.

`results.json` is `{"data": {...}, "rows": [...], "headline": {...}, "model": {...}}`; JSON has no inf or
NaN, so they are written as null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from proseco_jax.data import chain as markov_chain
from proseco_jax.evaluation import scoring

Row = dict[str, Any]


def banner(text: str) -> str:
    """A section title of the demo's output."""
    return f"\n=== {text}"


def row_summary(row: Row) -> str:
    """One row on one line, as the sweep reports its progress."""
    return (f"{row['family']:<22} T={row['steps']:<3} NFE {row['nfe']:6.1f} | transition error "
            f"{row['transition_error']:.4f} (as first decoded {row['transition_error_first_decoded']:.4f}) | "
            f"entropy {row['entropy']:.3f} | {row['seconds']:.1f} s")


def data_summary(data: Row) -> str:
    """The held-out data reference on one line."""
    return (f"data (held out, {data['num_samples']} sequences): transition error "
            f"{data['transition_error']:.4f} | entropy {data['entropy']:.3f} nats | chain NLL "
            f"{data['chain_nll']:.4f} (chain entropy {data['chain_entropy_nats_per_token']:.4f})")


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


def marked_text(history: np.ndarray, mask_id: int, per_line: int = 16) -> str:
    """One sample's final tokens as `tN`, with rewritten ones as `[tA→tB]` (first decoded → final).

    history: int [T, L] of one sample.
    """
    first, changed = scoring.corrections(history, mask_id)
    final = np.asarray(history)[-1]
    words = [f"[t{a}→t{b}]" if c else f"t{b}" for a, b, c in zip(first, final, changed)]
    return "\n".join(" ".join(words[i : i + per_line]) for i in range(0, len(words), per_line))


def correction_lines(results: dict[str, Any], outputs: Sequence[dict[str, np.ndarray]],
                     chain: markov_chain.MarkovChain, mask_id: int, count: int) -> list[str]:
    """`count` samples of a ProSeCo row with every token a corrector step rewrote marked, and the
    forbidden transitions before and after correction; no line when there is no such row.

    outputs: the samples of each row of `results["rows"]` (tokens [N, L], history [T, N, L], nfe [N]).
    """
    rows = results["rows"]
    candidates = [i for i, r in enumerate(rows) if r["sampler"] == "proseco" and not r["preset"]]
    if count <= 0 or not candidates:
        return []
    # The settings of the `balanced` preset (T=16, S=2, omega=1) if the grid has them, else the first row.
    shape = lambda r: (r["steps"], r["corrector_steps"], r["corrector_every"])
    pick = ([i for i in candidates if shape(rows[i]) == (16, 2, 1)] or candidates)[0]
    row, out = rows[pick], outputs[pick]
    first, changed = scoring.corrections(out["history"], mask_id)  # [N, L]
    lines = [banner(f"ProSeCo samples (T={row['steps']}, S={row['corrector_steps']}, "
                    f"ω={row['corrector_every']}): [tA→tB] was decoded as tA and rewritten by the corrector "
                    "to tB")]
    for i in range(min(count, out["tokens"].shape[0])):
        before = markov_chain.forbidden_count(first[i], chain)
        after = markov_chain.forbidden_count(out["tokens"][i], chain)
        lines.append(f"sample {i}: {int(changed[i].sum())} tokens rewritten | forbidden transitions: "
                     f"{before} as first decoded, {after} after correction | NFE {int(out['nfe'][i])}")
        lines.append(marked_text(out["history"][:, i], mask_id))
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


def bits_line(workdir: str, label: str) -> str:
    """The model's last validation bits per token against the chain's entropy, in words."""
    bits = validation_bits(workdir)
    if "val_bits_per_token" not in bits:
        return f"{label}: no validation figure in {workdir}/metrics.jsonl"
    line = (f"{label} (step {bits['step']}): validation {bits['val_bits_per_token']:.4f} bits/token "
            "(an upper bound, the negative ELBO)")
    if "data_bits_per_token" in bits:
        line += (f" vs the chain's entropy {bits['data_bits_per_token']:.4f} "
                 f"(excess {bits['val_bits_per_token'] - bits['data_bits_per_token']:+.4f})")
    return line
