"""The paper's OpenWebText run: DiT-small (12 layers, d=768, 12 heads), L=1024, GPT-2 tokens.

Where each setting comes from in the authors' code (`kuleshov-group/proseco`):
- training, `scripts/train_owt_mdlm_corrector.sh`: AdamW lr 3e-4 with 2500 warm-up steps and a constant
  schedule, batch 512, dropout 0.1, EMA 0.9999, gradient clipping at 1.0, training times from U[0.1, 1]
  (train_eps), the d3pm parameterisation with subs masking (no copy-over in pass one, [MASK] forbidden),
  the corrector fed the model's argmax at all positions, weighted and with errors up-weighted; no time
  conditioning (sigma = 0 everywhere, `time_conditioning=False`);
- model, `configs/model/small.yaml` and its DiT: the `small` preset, the reference's initialisation;
- sampling, `scripts/eval_samples_corrector.sh`: the subs parameterisation (decoded tokens copied over,
  whatever the training parameterisation), float64 sampling math, nucleus p = 0.9, T = 1024, eps 1e-5,
  the corrector's argmax rule every step; its sweep varies T, corrector_steps, corrector_every and
  corrector_top_k. The MDLM baselines of the paper ran with the reference's cache, which filters cached
  log-probs again (`sampling.nucleus_refilter=True` reproduces it; off here).

    python launch/prepare_data.py --config=configs/owt_small.py --config.data.files='owt/*.parquet' \
        --config.data.tokenizer_path=gpt2/tokenizer.json --config.data.data_dir=/data/proseco
    python launch/train.py --config=configs/owt_small.py --workdir=/mnt/bucket/owt_small \
        --config.mesh.fsdp=8 --config.data.files='owt/*.parquet' \
        --config.data.tokenizer_path=gpt2/tokenizer.json ...
"""

from proseco_jax import config_base


def get_config():
    config = config_base.get_config(model_preset="small")
    config.data.name = "owt"
    config.data.files = ""  # Local shards, e.g. '.../plain_text/train-*.parquet'; '' = `datasets` (online).
    config.data.tokenizer = "gpt2"
    config.data.tokenizer_path = ""  # A local GPT-2 tokenizer.json; '' = the hub's 'gpt2' (online or cached).
    config.data.packing = "wrap"  # The reference's: documents + EOS cut into BOS ... EOS blocks of 1024.
    config.data.validation_documents = 100_000  # The reference's split: the last 100k documents.
    config.data.vocab_size = 50257  # GPT-2 tokenizer; the model adds [MASK] = 50257.
    config.data.length = 1024
    config.data.worker_count = 4
    config.model.max_length = 1024
    config.model.dropout = 0.1
    config.model.time_conditioning = False
    config.model.vocab_multiple = 128
    config.model.dtype = "bfloat16"
    config.diffusion.train_eps = 0.1
    config.diffusion.parameterization = "d3pm"
    config.corrector.input = "all"
    config.corrector.weighted = True
    config.corrector.upweight_errors = True
    config.train.num_steps = 1_000_000
    config.train.batch_size = 512
    config.train.learning_rate = 3e-4
    config.train.warmup_steps = 2500
    config.train.ema_decay = 0.9999
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 10_000
    config.train.keep_checkpoints = 5
    config.sampling.parameterization = "subs"
    config.sampling.precision = "float64"
    config.sampling.nucleus_p = 0.9
    config.sampling.steps = 1024
    config.sampling.eps = 1e-5
    config.sampling.corrector_rule = "argmax"
    config.sampling.corrector_every = 1
    config.sampling.batch_size = 16
    return config
