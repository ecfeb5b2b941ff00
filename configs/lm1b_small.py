"""ProSeCo on LM1B (One Billion Words) with MDLM's LM1B setup: DiT-small, L=128, bert-base-uncased tokens.

Where each setting comes from:
- data, MDLM (`kuleshov-group/mdlm`) `configs/data/lm1b.yaml` and `dataloader.py`: the `lm1b` corpus,
  each sentence detokenised by MDLM's rules, tokenised with bert-base-uncased's WordPiece (30522 ids; the
  model adds [MASK] = 30522) and padded on its own, [CLS] sentence[:126] [SEP] [PAD]... (`wrap: False`; the
  padding is left out of the loss, as the reference's `compute_loss_on_pad_tokens=False`); the held-out
  files are what MDLM validates on (its `test` split). `--config.data.packing=wrap` packs sentences
  instead, as MDLM's `wrap=True`;
- model, MDLM `configs/model/small.yaml` with `model.length=128`: 12 layers, d=768, 12 heads, cond 128,
  dropout 0.1; `configs/config.yaml`: no time conditioning, bf16 (`trainer.precision`);
- training, MDLM `configs/config.yaml`: AdamW lr 3e-4, betas (0.9, 0.999), eps 1e-8, no weight decay,
  2500 warm-up steps then constant (`lr_scheduler/constant_warmup.yaml`), global batch 512, gradient
  clipping at 1.0, EMA 0.9999, 1M steps, validation every 10k steps; the loglinear schedule, antithetic
  times from U[1e-3, 1] and the subs parameterisation; sampling with 128 steps (`sampling.steps`);
- the ProSeCo corrector, the authors' (`kuleshov-group/proseco`) `scripts/train_owt_mdlm_corrector.sh`,
  their only corrector recipe: pass one's argmax fed back at all positions (under subs, visible positions
  already hold x), the corrector loss weighted by w(t) with errors up-weighted, both losses weight 1 from
  step 0.

    python launch/prepare_data.py --config=configs/lm1b_small.py \
        --config.data.files=/data/1-billion-word-language-modeling-benchmark-r13output \
        --config.data.tokenizer_path=/data/bert-base-uncased/vocab.txt --config.data.data_dir=/data/proseco
    python launch/train.py --config=configs/lm1b_small.py --workdir=runs/lm1b_small --config.data.files=... \
        --config.data.tokenizer_path=... --config.data.data_dir=/data/proseco
"""

from proseco_jax import config_base


def get_config():
    config = config_base.get_config(model_preset="small")
    config.data.name = "lm1b"
    config.data.files = ""  # The release directory (or a glob of its files); '' = `datasets` (online).
    config.data.tokenizer = "bert"
    config.data.tokenizer_path = ""  # A local vocab.txt / tokenizer.json; '' = the hub's bert-base-uncased.
    config.data.vocab_size = 30522  # bert-base-uncased; the model adds [MASK] = 30522.
    config.data.packing = "pad"  # MDLM's LM1B default (wrap: False): one sentence per sequence.
    config.data.length = 128
    config.data.worker_count = 4
    config.model.max_length = 128
    config.model.dropout = 0.1
    config.model.time_conditioning = False
    config.model.vocab_multiple = 128  # Table rows padded for the accelerator (never read; see owt_small).
    config.model.dtype = "bfloat16"
    config.diffusion.schedule = "loglinear"
    config.diffusion.train_eps = 1e-3
    config.diffusion.antithetic = True
    config.diffusion.parameterization = "subs"
    config.corrector.enabled = True
    config.corrector.start_step = 0
    config.corrector.input = "all"
    config.corrector.use_argmax = True
    config.corrector.weighted = True
    config.corrector.upweight_errors = True
    config.corrector.mdm_weight = 1.0
    config.corrector.corrector_weight = 1.0
    config.train.num_steps = 1_000_000
    config.train.batch_size = 512
    config.train.learning_rate = 3e-4
    config.train.warmup_steps = 2500
    config.train.lr_schedule = "constant"
    config.train.weight_decay = 0.0
    config.train.b1, config.train.b2, config.train.adam_eps = 0.9, 0.999, 1e-8
    config.train.grad_clip = 1.0
    config.train.ema_decay = 0.9999
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 10_000
    config.train.keep_checkpoints = 5
    config.sampling.steps = 128
    config.sampling.batch_size = 64
    return config
