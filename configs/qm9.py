"""The paper's QM9 run: molecules as SMILES tokens, a DiT conditioned on a property label (QED above its
90th percentile by default, `--config.data.label_property=ring_count` for rings) for classifier-free
guidance.

    python launch/train.py --config=configs/qm9.py --workdir=runs/qm9          # the authors' sizes
    python launch/train.py --config=configs/qm9.py:cpu --workdir=runs/qm9_cpu  # sized for a 2-core CPU

Where each setting comes from in the authors' code (`kuleshov-group/proseco`):
- data, `dataloader.py` (qm9) and `tokenizer.py`: canonical SMILES, the MolecularTransformer regex tokens,
  `[BOS] smiles [EOS] [PAD]...` of L = 32 with the loss on padding too, 5% held out by a permutation seeded
  with 42, label 1 above the 90th percentile; here offline from the `qm9pack` package's CSV files (30
  regex tokens + 4 specials = 34 ids; the model adds [MASK] = 34);
- training, `scripts/train_qm9_guidance_corrector.sh`: DiT-small, global batch 2048, 25k steps, AdamW lr
  3e-4 after 1000 warm-up steps with a cosine decay (theirs ends at 3e-6, ours at 0), bf16, EMA 0.9999,
  the d3pm parameterisation with subs masking, training times from U[0.1, 1], no time conditioning, the
  corrector fed the model's argmax at all positions, weighted, errors not up-weighted; two label classes.

The `cpu` preset keeps the data, the objective and the label classes and shrinks the model, the batch and
the step count to what two CPU cores train in minutes; `launch/demo.py --config=configs/qm9.py:cpu` trains
it and sweeps the guidance grid (gamma x T x MDLM / ProSeCo, steered towards class 1).
"""

from proseco_jax import config_base


def get_config(preset: str = ""):
    if preset not in ("", "cpu"):
        raise ValueError(f"configs/qm9.py takes no preset or 'cpu', got {preset!r}")
    config = config_base.get_config(model_preset="tiny" if preset == "cpu" else "small")
    config.data.name = "qm9"
    config.data.files = ""  # '' = qm9pack's QM9 CSV files; or a glob of CSV / parquet / JSONL files.
    config.data.smiles_column = "SMILES"
    config.data.tokenizer = "smiles"
    config.data.vocab_size = 34  # 4 special ids + QM9's 30 regex tokens; the model adds [MASK] = 34.
    config.data.length = 32
    config.data.label_property = "qed"
    config.data.label_percentile = 90.0
    config.data.validation_fraction = 0.05
    config.model.max_length = 32
    config.model.num_classes = 2
    config.model.time_conditioning = False
    config.diffusion.train_eps = 0.1
    config.diffusion.parameterization = "d3pm"
    config.corrector.input = "all"
    config.corrector.use_argmax = True
    config.corrector.weighted = True
    config.corrector.upweight_errors = False
    config.train.lr_schedule = "cosine"
    config.train.label_dropout = 0.1  # the authors': a label dropped to 'no label', so CFG has both models
    config.sampling.steps = 32
    if preset == "cpu":
        config.model.num_layers = 4
        config.model.hidden_size = 128
        config.model.num_heads = 4
        config.model.cond_dim = 64
        config.train.num_steps = 3000
        config.train.batch_size = 64
        config.train.learning_rate = 1e-3
        config.train.warmup_steps = 200
        config.train.ema_decay = 0.999
        config.train.log_every = 50
        config.train.eval_every = 500
        config.train.checkpoint_every = 500
        return config
    config.model.dtype = "bfloat16"
    config.model.vocab_multiple = 8
    config.train.num_steps = 25_000
    config.train.batch_size = 2048
    config.train.learning_rate = 3e-4
    config.train.warmup_steps = 1000
    config.train.ema_decay = 0.9999
    config.train.log_every = 100
    config.train.eval_every = 2500
    config.train.checkpoint_every = 2500
    return config
