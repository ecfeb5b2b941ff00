"""The demo: train ProSeCo, then quality against NFE, MDLM vs ProSeCo, on the embedded Markov language
or on local text.

    python launch/demo.py --workdir=runs/demo [--seeds=3] [--quick] [--compare_training] \
        [--config.FIELD=VALUE]
    python launch/demo.py --config=configs/text_files.py --config.data.files='docs/*.txt' \
        --workdir=runs/text_demo [--evaluator_dir=gpt2] [--quick]

Builds the sparse Markov corpus (first run only), trains a tiny DiT with the ProSeCo objective for 400
steps (configs/synthetic.py; a rerun resumes from the workdir's checkpoints), samples it with MDLM, ReMDM and
ProSeCo over a grid of (T, S, omega), scores every sample exactly against the chain, and writes
WORKDIR/results.json and WORKDIR/quality_vs_nfe.png. It prints the table, the headline (how many fewer NFE
ProSeCo needs to reach MDLM's best transition error; error and entropy at the max preset), a few samples
with the tokens the corrector rewrote marked [tA→tB], and the model's validation bits per token against
the chain's entropy. --compare_training also trains a plain MDLM model (corrector.enabled=False, same
budget) in WORKDIR/mdlm and adds its rows. --quick is a smoke run of a few minutes at most.

Every headline comes with its spread: --seeds=N (default 3) trains N models (seeds seed..seed+N-1, the
first in WORKDIR, the others in WORKDIR/seed<seed>) and sweeps each under its own sampling seed; the table
and plot show each setting's median over the seeds, the headline each figure's median and range
(min..max), the bars judged on the median, and results.json keeps every seed's rows and headline
(`per_seed`).

On text (configs/text_files.py: a tiny byte-level DiT on any local text, its own 1200 steps) the same
steps run on the text grid (`grid.text_grid`); samples are shown as decoded text, MDLM's plain and
ProSeCo's with every character (or token) the corrector rewrote marked [a→b]; the likelihood section
sets the validation bits per token against the unigram entropy of the corpus's own training tokens, and
gen-PPL (the headline's quality figure) is scored under the GPT-2 of --evaluator_dir when given.

On molecules (`--config=configs/qm9.py:cpu`: a label-conditioned DiT on QM9's SMILES, its own budget) the
sweep is the guidance grid (`grid.guidance_grid`: gamma in {0..5} x T in {32, 64, 128} x MDLM / ProSeCo,
steered towards the high-property class), each row scored by RDKit (validity, uniqueness, novelty by the
authors' rule and on canonical forms, the property's mean); it prints the table, the headline (ProSeCo's
frontier of novel samples against their mean property, against MDLM's), molecules as SMILES with the
corrector's rewrites marked (a rewrite between two specials, e.g. pad -> eos, shows nothing and is only
counted), and writes WORKDIR/results.json and WORKDIR/novel_vs_property.png. Its training takes ~9
minutes, so it trains once and samples the grid under --seeds sampling seeds (default 3); the headline
adds guidance's effect: the valid molecules' mean property at gamma = 3 against gamma = 0, met when the
gamma = 3 range over the seeds lies above the gamma = 0 range. Text trains once too (default 1 seed).
"""

import os
import time

from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, config_base, train
from proseco_jax.data import datasets
from proseco_jax.evaluation import report, scoring, sweep

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic.py")
_CONFIG = config_flags.DEFINE_config_file("config", os.path.normpath(_DEFAULT_CONFIG),
                                          "Config file (default: configs/synthetic.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results.json and the plot.",
                               required=True)
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: a short training, a few sampler rows, few samples.")
_COMPARE = flags.DEFINE_bool("compare_training", False, "Also train plain MDLM with the same budget in "
                             "WORKDIR/mdlm and sample it with MDLM.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples per sweep row and seed (default: Markov "
                                    "96, molecules and text 48; quick: 32, molecules 64).", lower_bound=1)
_SEEDS = flags.DEFINE_integer(
    "seeds", None, "Seeds seed, seed+1, ...: the headline gives each figure as its median and range over "
    "them, the bars judged on the median. Markov language: one training and sweep per seed (its 400 steps "
    "take under 2 minutes; the spread that matters comes from training, which moves with the machine's "
    "floating-point order); molecules and text: one training (~10 minutes) sampled under each seed. "
    "Default 3 (quick and text: 1).", lower_bound=1)
_SHOW = flags.DEFINE_integer("show", 3, "Samples printed with the corrector's rewrites marked.")
_EVALUATOR_DIR = flags.DEFINE_string("evaluator_dir", None, "Text: local Hugging Face GPT-2 directory "
                                     "(config.json, model.safetensors, tokenizer.json) scoring gen-PPL.")

# Fields set unless given on the command line: the Markov language's budget (about 5 minutes on 2 idle CPU
# cores; a text config keeps its own) ...
_DEMO_FIELDS = {"train.num_steps": 400}
# ... and --quick, a smoke run (training ~1/7 of that).
_QUICK_FIELDS = {"train.num_steps": 60, "train.warmup_steps": 10, "train.log_every": 10,
                 "train.eval_every": 60, "train.eval_batches": 2, "train.checkpoint_every": 60}
# Seeds unless --seeds (quick: 1). The Markov language trains once per seed: three trainings (~1.3 min each
# on 2 idle cores) and three sweeps of 96 samples per row (288 per setting) take about 6 minutes, since
# the samplers compile once for all three models; the grid keeps all 20 rows, since the headline reads
# MDLM's best over its whole T range.
# Molecules: one training (3000 steps, ~9 min) sampled under three seeds of 48 molecules per row (144 per
# setting, 128 with one seed before), so the 39-row guidance grid costs about what one seed of 128 did and
# the demo stays at ~15 minutes (the paper's 1024 per row would take over an hour). Text: one seed of 48
# per row, whose longer rows would otherwise take most of its ~10 minutes.
_MARKOV_SEEDS, _MOLECULE_SEEDS, _TEXT_SEEDS = 3, 3, 1
_MARKOV_SAMPLES, _SAMPLES, _QUICK_MOLECULE_SAMPLES = 96, 48, 64  # per row and seed


def _configure(config, num_samples: int) -> None:
    """Applies the demo's fields and one sampling batch per row to the ConfigDict, except where the
    command line set them."""
    given = config_flags.get_override_values(flags.FLAGS["config"])
    budget = _QUICK_FIELDS if _QUICK.value else _DEMO_FIELDS if config.data.name == "markov" else {}
    fields = dict(budget, **{"sampling.batch_size": num_samples})
    for name, value in fields.items():
        if name not in given:
            section, field = name.split(".")
            config[section][field] = value


def _train(config: config_base.Config, workdir: str, label: str) -> None:
    """Trains (or resumes) to train.num_steps; stops the demo if training was interrupted (SIGTERM)."""
    print(report.banner(f"training {label} for {config.train.num_steps} steps in {workdir}"), flush=True)
    _, step = train.train_and_evaluate(config, workdir)
    if step < config.train.num_steps:
        print(f"training stopped at step {step} of {config.train.num_steps}; rerun the same command to "
              "resume", flush=True)
        raise SystemExit(0)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    start = time.time()
    config_dict = cli.config_or_fail(_CONFIG)
    name = config_dict.data.name
    defaults = {"markov": (32, _MARKOV_SAMPLES, _MARKOV_SEEDS),
                "qm9": (_QUICK_MOLECULE_SAMPLES, _SAMPLES, _MOLECULE_SEEDS)}
    quick, samples, default_seeds = defaults.get(name, (32, _SAMPLES, _TEXT_SEEDS))
    num_samples = _NUM_SAMPLES.value or (quick if _QUICK.value else samples)
    seeds = _SEEDS.value or (1 if _QUICK.value else default_seeds)
    sweep.check_request(config_dict, num_samples, _EVALUATOR_DIR.value)
    _configure(config_dict, num_samples)
    config = config_base.resolve(config_dict)
    workdir = _WORKDIR.value
    # The Markov language trains once per seed: seed k's model in WORKDIR/seed<seed> (the first in WORKDIR).
    trainings = seeds if name == "markov" else 1
    workdirs = [workdir] + [os.path.join(workdir, f"seed{config.seed + k}") for k in range(1, trainings)]
    mdlm_workdir = os.path.join(workdir, "mdlm") if _COMPARE.value else None
    for path in [*workdirs, *([mdlm_workdir] if mdlm_workdir else [])]:
        cli.sole_writer(path)  # Trained here in-process: no train.py or second demo may write them meanwhile.
    for k, seed_workdir in enumerate(workdirs):
        label = f"ProSeCo (seed {config.seed + k})" if trainings > 1 else "ProSeCo"
        _train(config.replace(seed=config.seed + k), seed_workdir, label)
    if mdlm_workdir:
        mdlm_config = config.replace(corrector=config.corrector.replace(enabled=False))
        _train(mdlm_config, mdlm_workdir, "plain MDLM (corrector.enabled=False)")
    print(f"training done after {time.time() - start:.0f} s", flush=True)

    print(report.banner("sweep: quality against NFE"), flush=True)
    results, outputs = sweep.sweep_workdirs(config, workdir, workdir, num_samples=num_samples,
                                            quick=_QUICK.value, mdlm_workdir=mdlm_workdir,
                                            evaluator_dir=_EVALUATOR_DIR.value, seeds=seeds,
                                            seed_workdirs=workdirs if trainings > 1 else None)
    first_seed = results["per_seed"][0] if "per_seed" in results else results  # the rows `outputs` are of
    renderer = scoring.make_scorer(config, datasets.load(config.data))  # shows tokens; scores nothing here
    if renderer.kind in ("text", "chemistry"):
        for line in report.sample_lines(first_seed, outputs, renderer, "mdlm", _SHOW.value):
            print(line, flush=True)
    for line in report.correction_lines(first_seed, outputs, renderer, config.mask_id, _SHOW.value):
        print(line, flush=True)
    print(report.banner("likelihood"), flush=True)
    unigram = results["data"]["unigram_bits_per_token"]
    print(f"unigram baseline: the training tokens' own unigram entropy is {unigram:.4f} bits/token "
          f"({results['data']['unigram_tokens']:,} tokens)", flush=True)
    for k, seed_workdir in enumerate(workdirs):
        label = f"ProSeCo model (seed {config.seed + k})" if trainings > 1 else "ProSeCo model"
        print(report.bits_line(seed_workdir, label, unigram), flush=True)
    if mdlm_workdir:
        print(report.bits_line(mdlm_workdir, "MDLM model", unigram), flush=True)
    print(f"\ndemo done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
