"""ProSeCo fine-tuning of LLaDA-8B on prompt/response pairs (the paper's code + math SFT) on a TPU pod slice.

Where each setting comes from:
  [ProSeCo]  the paper (arXiv 2602.11590): LLaDA-8B fine-tuned with the ProSeCo objective (LLaDA's SFT loss
             on the response + the corrector loss, a = b = 1) on code and math data. Its appendix's
             optimiser figures could not be consulted when this file was written: every number marked
             [LLaDA] below stands in for it and is to be checked against that appendix.
  [LLaDA]    LLaDA's SFT (Nie et al., arXiv 2502.09992, section 2.3 and its SFT appendix): AdamW, weight
             decay 0.1, global batch 256, sequence length 4096 (prompt + response + |EOS| padding, the
             padding scored), peak learning rate 2.5e-5 after a 50-step linear warm-up, masking rate
             p = (1 - eps) t + eps with eps = 1e-3. LLaDA then decays the rate linearly to 2.5e-6 over the
             last 10% of steps; train.lr_schedule has no such tail here, so it stays constant.
  [ours]     bfloat16 matmuls with float32 parameters and optimizer state, remat of every block, gradient
             clipping at 1.0, the EMA of the parameters (LLaDA keeps none; sampling reads it).

Initialisation: the pretrained weights are imported into the workdir first (a step-0 checkpoint), then
training resumes from it:

    python launch/convert.py --source=GSAI-ML/LLaDA-8B-Base --workdir=runs/llada_8b_sft   # or -Instruct
    python launch/train.py --config=configs/llada_8b_sft.py --workdir=runs/llada_8b_sft --multihost \
        --config.data.files='gs://.../sft/*.jsonl'      # or local/mounted files

Mesh: v5p-64 (`--topology=v5p:4x4x4`, 64 chips of 95 GiB) runs pure FSDP, mesh.fsdp = 64, 4 sequences per
chip. `python launch/aot_compile.py --config=configs/llada_8b_sft.py --topology=v5p:4x4x4` (2026-11-30): state
1.87 GiB, temporaries 74.3 GiB, code 2.76 GiB, total 78.9 GiB per chip (fits, 17% free); 1.08e17 model
FLOPs per step, 9.2 s at 40% of peak.
v5e-64 (`--topology=v5e:8x8`, 16 GiB per chip): the same mesh with --config.train.micro_batches=4 (one
sequence per chip per micro-batch): temporaries 12.7 GiB, total 14.8 GiB per chip (fits, 8% free: tight),
21.4 s per step at 40% of peak.
"""

from proseco_jax import config_base

LLADA_MASK_ID = 126336  # <|mdm_mask|>, inside LLaDA's 126464-row tables
LLADA_EOS_ID = 126081  # <|endoftext|>, LLaDA's padding


def get_config():
    config = config_base.get_config(model_preset="llada_8b", model="llada")
    config.model.dtype = "bfloat16"  # [ours]
    config.model.param_dtype = "float32"  # [ours] float32 master weights, as mixed-precision training keeps
    config.model.remat = True  # [ours]
    config.model.max_length = 4096

    config.data.name = "sft_jsonl"
    config.data.files = ""  # Required: JSONL files of {"prompt", "response"} or {"messages"} records.
    # The Instruct tokenizer carries LLaDA's chat template (the Base one is the same vocabulary).
    config.data.tokenizer_path = "GSAI-ML/LLaDA-8B-Instruct"
    config.data.vocab_size = LLADA_MASK_ID  # The framework's [MASK] is data.vocab_size.
    config.data.length = 4096  # [LLaDA]
    config.data.validation_fraction = 0.01

    config.train.objective = "sft"  # [ProSeCo]
    config.train.batch_size = 256  # [LLaDA]
    config.train.micro_batches = 1
    config.train.learning_rate = 2.5e-5  # [LLaDA]
    config.train.warmup_steps = 50  # [LLaDA]
    config.train.lr_schedule = "constant"  # [LLaDA] without its final linear decay (see above)
    config.train.weight_decay = 0.1  # [LLaDA]
    config.train.grad_clip = 1.0  # [ours]
    config.train.num_steps = 10_000  # Set from the data: epochs x records / 256 (LLaDA: 3 epochs).
    config.train.ema_decay = 0.999  # [ours]
    config.train.log_every = 10
    config.train.eval_every = 500
    config.train.eval_batches = 4
    config.train.checkpoint_every = 500

    config.diffusion.train_eps = 1e-3  # [LLaDA]
    config.corrector.enabled = True  # [ProSeCo]
    config.corrector.mdm_weight = 1.0  # [ProSeCo] a
    config.corrector.corrector_weight = 1.0  # [ProSeCo] b

    config.mesh.data = 1
    config.mesh.fsdp = -1  # All 64 chips of a v5p-64 / v5e-64 slice.
    config.mesh.tensor = 1

    config.sampling.sampler = "llada_block"
    config.sampling.eos_id = LLADA_EOS_ID
    return config
