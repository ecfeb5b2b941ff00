"""ProSeCo fine-tuning (SFT) of a test-size LLaDA on local prompt/response pairs: runs on a CPU in seconds.

The same path as configs/llada_8b_sft.py at toy size: `data.name=sft_jsonl` tokenises JSONL records with
the chat template of a Hugging Face tokenizer directory, and `train.objective=sft` trains LLaDA's SFT loss
on the responses plus the corrector pass. The vocabulary is laid out as LLaDA's, [MASK] inside the table
with the chat's special tokens above it: the tokenizer must have at most 264 ids with its [MASK] token at
id 258 (e.g. 256 byte-level ids, then <|endoftext|> 256, <|startoftext|> 257, <|mdm_mask|> 258 and the turn
markers 259..), as the tokenizer the tests write.

    python launch/train.py --config=configs/llada_tiny_sft.py --workdir=runs/llada_tiny_sft \
        --config.data.files='sft/*.jsonl' --config.data.tokenizer_path=sft/tokenizer
"""

from proseco_jax import config_base

MASK_ID, TABLE_ROWS = 258, 264


def get_config():
    config = config_base.get_config(model_preset="llada_tiny", model="llada")
    config.data.name = "sft_jsonl"
    config.data.files = ""  # Required: a glob of JSONL files of {"prompt", "response"} or {"messages"}.
    config.data.tokenizer_path = ""  # Required: the tokenizer directory described above.
    config.data.vocab_size = MASK_ID  # The framework's [MASK] is data.vocab_size (LLaDA: mask_token_id).
    config.data.length = 64
    config.data.validation_fraction = 0.1
    config.model.vocab_size = TABLE_ROWS
    config.model.mask_token_id = MASK_ID
    config.model.max_length = 64
    config.train.objective = "sft"
    config.train.num_steps = 40
    config.train.batch_size = 8
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 5
    config.train.log_every = 5
    config.train.eval_every = 20
    config.train.eval_batches = 1
    config.train.checkpoint_every = 10
    config.train.ema_decay = 0.9
    config.corrector.input = "masked"
    config.sampling.sampler = "llada_block"
    return config
