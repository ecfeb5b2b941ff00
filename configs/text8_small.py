"""DiT-small on text8 characters with md4's text8 settings (`google-deepmind/md4`, configs/md4/text8.py).

Data: a local text8.zip (default `data.data_dir/text8.zip`), split 90M / 5M / 5M characters into train /
validation / test and cut into chunks of L = 256 characters over the 27 symbols a-z and space (no BOS or
EOS), as D3PM and md4 do. Model: 12 layers, d = 768, 12 heads. Training as md4: AdamW lr 3e-4 with 2000
warm-up steps and cosine decay, b2 0.999, no weight decay, no gradient clipping, EMA 0.9999, batch 512,
1M steps; md4's linear schedule alpha(t) = 1 - t is our loglinear one (eps = 1e-3).

    python launch/prepare_data.py --config=configs/text8_small.py --config.data.files=/path/text8.zip
    python launch/train.py --config=configs/text8_small.py --workdir=runs/text8 --config.data.files=...
"""

from proseco_jax import config_base


def get_config():
    config = config_base.get_config(model_preset="small")
    config.data.name = "text8"
    config.data.files = ""  # '' = data.data_dir/text8.zip.
    config.data.tokenizer = "chars"
    config.data.vocab_size = 27
    config.data.packing = "wrap"
    config.data.length = 256
    config.data.worker_count = 4
    config.model.max_length = 256
    config.diffusion.schedule = "loglinear"
    config.train.num_steps = 1_000_000
    config.train.batch_size = 512
    config.train.learning_rate = 3e-4
    config.train.warmup_steps = 2000
    config.train.lr_schedule = "cosine"
    config.train.weight_decay = 0.0
    config.train.grad_clip = 0.0
    config.train.b2 = 0.999
    config.train.ema_decay = 0.9999
    config.train.log_every = 500
    config.train.eval_every = 5000
    config.train.checkpoint_every = 5000
    config.sampling.steps = 256
    config.sampling.batch_size = 32
    return config
