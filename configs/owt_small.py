"""The paper's OpenWebText run: DiT-small (12 layers, d=768, 12 heads), L=1024, GPT-2 tokens.

Hyper-parameters follow the authors' OWT ProSeCo training: AdamW lr 3e-4 with 2500 warm-up steps and a
constant schedule, batch 512, dropout 0.1, EMA 0.9999, gradient clipping at 1.0, training times from
U[0.1, 1], the d3pm parameterisation (no copy-over in pass one) with the corrector fed the model's argmax
at all positions, weighted, errors up-weighted. Needs OpenWebText prepared under `data.data_dir`.

    python launch/train.py --config=configs/owt_small.py --workdir=gs://.../owt_small --config.mesh.fsdp=8
"""

from proseco_jax import config_base


def get_config():
    config = config_base.get_config(model_preset="small")
    config.data.name = "owt"
    config.data.vocab_size = 50257  # GPT-2 tokenizer; the model adds [MASK] = 50257.
    config.data.length = 1024
    config.data.worker_count = 4
    config.model.max_length = 1024
    config.model.dropout = 0.1
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
    config.sampling.steps = 1024
    config.sampling.batch_size = 16
    return config
