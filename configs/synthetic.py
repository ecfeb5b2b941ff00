"""The embedded default: a tiny DiT trained with ProSeCo on the sparse Markov language (V=32, k=3, L=64).

Runs on a laptop CPU in minutes and needs no download: the corpus is generated into `data.data_dir` on
first use, together with the chain (`chain.npz`) that scores samples exactly.

    python launch/train.py --config=configs/synthetic.py --workdir=runs/synthetic
"""

from proseco_jax import config_base


def get_config():
    config = config_base.get_config(model_preset="tiny")
    config.data.name = "markov"
    config.data.vocab_size = 32
    config.data.successors = 3
    config.data.length = 64
    config.model.max_length = 64
    config.train.num_steps = 600
    config.train.batch_size = 64
    config.train.learning_rate = 2e-3
    config.train.warmup_steps = 50
    config.train.log_every = 25
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    config.train.ema_decay = 0.99
    return config
