"""The demo on the embedded Markov language: train ProSeCo, then quality against NFE, MDLM vs ProSeCo.

    python launch/demo.py --workdir=runs/demo [--quick] [--compare_training] [--config.FIELD=VALUE]

Builds the sparse Markov corpus (first run only), trains a tiny DiT with the ProSeCo objective for 400
steps (configs/synthetic.py; a rerun resumes from the workdir's checkpoints), samples it with MDLM, ReMDM and
ProSeCo over a grid of (T, S, omega), scores every sample exactly against the chain, and writes
WORKDIR/results.json and WORKDIR/quality_vs_nfe.png. It prints the table, the headline (how many fewer NFE
ProSeCo needs to reach MDLM's best transition error; error and entropy at the max preset), a few samples
with the tokens the corrector rewrote marked [tA→tB], and the model's validation bits per token against
the chain's entropy. --compare_training also trains a plain MDLM model (corrector.enabled=False, same
budget) in WORKDIR/mdlm and adds its rows. --quick is a smoke run of a few minutes at most.
"""

import os
import time

from absl import flags
from ml_collections import config_flags

from proseco_jax import checkpoint, cli, train
from proseco_jax.data import datasets
from proseco_jax.evaluation import markov_metrics, sweep

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic.py")
_CONFIG = config_flags.DEFINE_config_file("config", os.path.normpath(_DEFAULT_CONFIG),
                                          "Config file (default: configs/synthetic.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results.json and the plot.",
                               required=True)
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: a short training, a few sampler rows, few samples.")
_COMPARE = flags.DEFINE_bool("compare_training", False, "Also train plain MDLM with the same budget in "
                             "WORKDIR/mdlm and sample it with MDLM.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples per sweep row (default 96; quick: 32).")
_SHOW = flags.DEFINE_integer("show", 3, "Samples printed with the corrector's rewrites marked.")

# Fields set unless given on the command line: the default budget (about 10 minutes on 2 CPU cores) ...
_DEMO_FIELDS = {"train.num_steps": 400}
# ... and --quick, a smoke run (training ~1/7 of that).
_QUICK_FIELDS = {
    "train.num_steps": 60,
    "train.warmup_steps": 10,
    "train.log_every": 10,
    "train.eval_every": 60,
    "train.eval_batches": 2,
    "train.checkpoint_every": 60,
}


def _configure(config) -> int:
    """Applies --quick and the sampling batch to `config`; returns the samples per row."""
    given = config_flags.get_override_values(flags.FLAGS["config"])
    for name, value in (_QUICK_FIELDS if _QUICK.value else _DEMO_FIELDS).items():
        if name not in given:
            section, field = name.split(".")
            config[section][field] = value
    num_samples = _NUM_SAMPLES.value or (32 if _QUICK.value else 96)
    if num_samples < 1:
        cli.fail(f"--num_samples must be positive, got {num_samples}")
    if "sampling.batch_size" not in given:
        config.sampling.batch_size = num_samples  # one compiled call per row
    return num_samples


def _train(config, workdir: str) -> None:
    """Trains (or resumes) to config.train.num_steps; stops the demo if training was interrupted (SIGTERM)."""
    train.train_and_evaluate(config, workdir)
    manager = checkpoint.make_manager(workdir, 1, read_only=True)
    step = manager.latest_step() or 0
    manager.close()
    if step < config.train.num_steps:
        print(f"training stopped at step {step} of {config.train.num_steps}; rerun the same command to "
              "resume", flush=True)
        raise SystemExit(0)


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _show_corrections(config, results: dict, outputs: list[dict], count: int) -> None:
    """Prints `count` samples of a ProSeCo row with every token a corrector step rewrote marked."""
    rows = results["rows"]
    candidates = [i for i, r in enumerate(rows) if r["sampler"] == "proseco" and not r["preset"]]
    if count <= 0 or not candidates:
        return
    # The settings of the `balanced` preset (T=16, S=2, omega=1) if the grid has them, else the first row.
    shape = lambda r: (r["steps"], r["corrector_steps"], r["corrector_every"])
    pick = ([i for i in candidates if shape(rows[i]) == (16, 2, 1)] or candidates)[0]
    row, out = rows[pick], outputs[pick]
    _, transition = markov_metrics.load_chain_npz(datasets.load(config.data).chain_path)
    mask_id = int(config.data.vocab_size)
    first, changed = sweep.corrections(out["history"], mask_id)  # [N, L]
    _banner(f"ProSeCo samples (T={row['steps']}, S={row['corrector_steps']}, ω={row['corrector_every']}): "
            "[tA→tB] was decoded as tA and rewritten by the corrector to tB")
    for i in range(min(count, out["tokens"].shape[0])):
        before = sweep.forbidden_count(first[i], transition)
        after = sweep.forbidden_count(out["tokens"][i], transition)
        print(f"sample {i}: {int(changed[i].sum())} tokens rewritten | forbidden transitions: {before} as "
              f"first decoded, {after} after correction | NFE {int(out['nfe'][i])}", flush=True)
        print(sweep.marked_text(out["history"][:, i], mask_id), flush=True)


def _show_bits(workdir: str, label: str) -> None:
    bits = sweep.validation_bits(workdir)
    if "val_bits_per_token" not in bits:
        print(f"{label}: no validation figure in {workdir}/metrics.jsonl", flush=True)
        return
    line = (f"{label} (step {bits['step']}): validation {bits['val_bits_per_token']:.4f} bits/token "
            "(an upper bound, the negative ELBO)")
    if "data_bits_per_token" in bits:
        line += (f" vs the chain's entropy {bits['data_bits_per_token']:.4f} "
                 f"(excess {bits['val_bits_per_token'] - bits['data_bits_per_token']:+.4f})")
    print(line, flush=True)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    start = time.time()
    config = cli.config_or_fail(_CONFIG)
    if config.data.name != "markov":
        cli.fail(f"the demo runs on the Markov language (data.name='markov'), got {config.data.name!r}")
    num_samples = _configure(config)
    workdir = _WORKDIR.value
    _banner(f"training ProSeCo for {config.train.num_steps} steps in {workdir}")
    _train(config, workdir)
    mdlm_workdir = None
    if _COMPARE.value:
        mdlm_workdir = os.path.join(workdir, "mdlm")
        mdlm_config = config.copy_and_resolve_references()
        mdlm_config.corrector.enabled = False
        _banner(f"training plain MDLM (corrector.enabled=False) for {config.train.num_steps} steps in "
                f"{mdlm_workdir}")
        _train(mdlm_config, mdlm_workdir)
    print(f"training done after {time.time() - start:.0f} s", flush=True)

    _banner("sweep: quality against NFE")
    results, outputs = sweep.sweep_workdirs(config, workdir, workdir, num_samples=num_samples,
                                            quick=_QUICK.value, mdlm_workdir=mdlm_workdir)
    _show_corrections(config, results, outputs, _SHOW.value)
    _banner("likelihood")
    _show_bits(workdir, "ProSeCo model")
    if mdlm_workdir:
        _show_bits(mdlm_workdir, "MDLM model")
    print(f"\ndemo done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    cli.run(main)
