"""A tiny DiT trained with ProSeCo on any local text, byte by byte (or with a BPE trained on it).

    python launch/train.py --config=configs/text_files.py --workdir=runs/text \
        --config.data.files='path/to/*.txt' [--config.data.document_per=line]

The files are tokenised and packed into `data.data_dir` on first use (`launch/prepare_data.py` does it
alone). The real-text demo trains this config on the standard library's own docstrings and sweeps MDLM
against ProSeCo on it:

    python launch/gather_stdlib_docs.py --output_dir=data/stdlib_docs
    python launch/demo.py --config=configs/text_files.py --workdir=runs/text_demo \
        --config.data.files='data/stdlib_docs/*.txt' [--evaluator_dir=path/to/gpt2]

Sized for a 2-core CPU: 1.09M parameters, batch 16 x 128 bytes, 1200 steps, about 8 minutes on 2 idle
cores (~5,400 tokens/s; about half that with one core busy elsewhere), enough to learn the corpus's
spelling and frequent words. For subword tokens set `--config.data.tokenizer=bpe:1024
--config.data.vocab_size=1024` (the vocabulary must match the tokenizer's).
"""

from proseco_jax import config_base


def get_config():
    config = config_base.get_config(model_preset="tiny")
    config.data.name = "text_files"
    config.data.files = ""  # Required: a glob of .txt / .jsonl / .parquet / .arrow files.
    config.data.tokenizer = "bytes"
    config.data.vocab_size = 259  # 256 bytes + BOS, EOS, PAD.
    config.data.packing = "wrap"
    config.data.length = 128
    config.model.max_length = 128
    config.model.num_layers = 4
    config.model.hidden_size = 128
    config.model.num_heads = 4
    config.model.cond_dim = 64
    config.train.num_steps = 1200
    config.train.batch_size = 16
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 100
    config.train.log_every = 50
    config.train.eval_every = 300
    config.train.eval_batches = 4  # 64 held-out sequences: 8 KB of text.
    config.train.checkpoint_every = 300
    config.train.ema_decay = 0.99
    config.sampling.steps = 128
    return config
