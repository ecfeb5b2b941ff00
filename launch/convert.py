"""Converts the authors' MDLM / ProSeCo DiT checkpoints and LLaDA checkpoints into a workdir, and a DiT
workdir back.

    python launch/convert.py --source=kuleshov-group/proseco-owt --workdir=runs/proseco_owt
    python launch/convert.py --source=PATH/last.ckpt --workdir=runs/mine --ema
    python launch/convert.py --export --workdir=runs/mine --output_dir=hf/mine
    python launch/convert.py --source=GSAI-ML/LLaDA-8B-Instruct --workdir=runs/llada_8b_sft \
        [--config=configs/llada_8b_sft.py]

--source is a Hugging Face model directory (config.json + model.safetensors or pytorch_model.bin), a Hub
repo id (downloaded; needs huggingface_hub and the network), or the reference's Lightning .ckpt (--ema
takes its EMA weights). The new workdir holds config.json (the model's shape from the source; the rest from
configs/owt_small.py for GPT-2-vocabulary models, else the defaults) and a step-0 checkpoint, so
`launch/sample.py --workdir=DIR --output=...` and `launch/evaluate.py --workdir=DIR ...` run on it with no
--config. --export writes the workdir's EMA weights in the authors' Hugging Face layout. Bad input (a path
that is no checkpoint, another architecture, a missing, extra or mis-shaped tensor) is one line and exit
code 2, and nothing is written. A second conversion into the same --workdir (or a training run on it) stops
at once in one line naming the first; so does a full disk, leaving no part of the new workdir.

A LLaDA checkpoint (a directory whose config.json has model_type 'llada' and sharded safetensors, or a Hub
repo id naming LLaDA, downloaded with its tokenizer) is streamed tensor by tensor onto every local device,
fully sharded, and written with the settings of --config (default: configs/llada_8b_sft.py); its
directory's tokenizer becomes data.tokenizer_path, for prompts and decoding. `launch/train.py --config=...
--workdir=DIR` then fine-tunes from it, and `launch/sample.py --workdir=DIR --prompt=...` samples it.
"""

import os

import ml_collections
from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, config_base
from proseco_jax.interop import convert, layout, sources
from proseco_jax.interop import llada as llada_hf

_SOURCE = flags.DEFINE_string("source", None, "Reference checkpoint: model directory, Hub repo id or .ckpt.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir to create (import) or to read (--export).",
                               required=True)
_EMA = flags.DEFINE_bool("ema", False, "Lightning .ckpt: convert the EMA weights instead of the raw ones.")
_EXPORT = flags.DEFINE_bool("export", False, "Write --workdir's EMA weights to --output_dir as the authors' "
                            "Hugging Face model.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "--export: the Hugging Face model directory to create.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Settings of the new workdir (the model's shape "
                                          "always comes from --source); default: configs/owt_small.py for "
                                          "GPT-2-vocabulary DiTs, configs/llada_8b_sft.py for LLaDA, else "
                                          "the defaults.", lock_config=True)

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


def _config_file(name: str) -> ml_collections.ConfigDict:
    return config_base.from_file(os.path.join(CONFIGS, f"{name}.py"))


def base_config(ref: layout.ReferenceConfig) -> ml_collections.ConfigDict:
    """--config, else configs/owt_small.py for a GPT-2-vocabulary model, else the default config."""
    if flags.FLAGS[_CONFIG.name].present:
        return cli.config_or_fail(_CONFIG)
    return _config_file("owt_small") if convert.is_text_model(ref) else config_base.get_config()


def import_llada(source: str, workdir: str) -> None:
    base = cli.config_or_fail(_CONFIG) if flags.FLAGS[_CONFIG.name].present else _config_file("llada_8b_sft")
    config = convert.import_llada(source, workdir, base)
    m = config.model
    print(f"wrote {workdir} from {source}: LLaDA {m.num_layers} layers, d={m.hidden_size}, "
          f"{m.num_heads} heads ({m.num_kv_heads} key/value), {m.vocab_size} ids, [MASK]={m.mask_token_id}, "
          f"EOS={config.sampling.eos_id}, "
          f"tokenizer {config.data.tokenizer_path or 'none (set data.tokenizer_path)'}", flush=True)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _EXPORT.value:
        if _SOURCE.value or _EMA.value or not _OUTPUT_DIR.value:
            cli.fail("--export takes --workdir and --output_dir (no --source, no --ema)")
        ref = convert.export_checkpoint(_WORKDIR.value, _OUTPUT_DIR.value)
        print(f"wrote {_OUTPUT_DIR.value}: {ref.n_blocks} blocks, d={ref.hidden_dim}, vocab {ref.vocab_size} "
              "([MASK] included)", flush=True)
        return
    if not _SOURCE.value or _OUTPUT_DIR.value:
        cli.fail("importing takes --source and --workdir (--output_dir belongs to --export)")
    convert.check_new_directory(_WORKDIR.value, "--workdir")
    cli.sole_writer(_WORKDIR.value)
    convert.check_new_directory(_WORKDIR.value, "--workdir")  # A conversion that just finished filled it.
    if llada_hf.is_llada(_SOURCE.value):
        if _EMA.value:
            cli.fail("--ema picks the EMA weights of a Lightning .ckpt; a LLaDA checkpoint holds one set")
        import_llada(_SOURCE.value, _WORKDIR.value)
        return
    source = sources.read(_SOURCE.value, ema=_EMA.value)
    config = convert.import_checkpoint(source, _WORKDIR.value, base_config(source.config))
    weights = "EMA weights" if _EMA.value else "weights"
    print(f"wrote {_WORKDIR.value} from the {weights} of {source.origin}: {config.model.num_layers} layers, "
          f"d={config.model.hidden_size}, data.name={config.data.name}, V={config.data.vocab_size}, "
          f"L={config.data.length}, time_conditioning={config.model.time_conditioning}", flush=True)


if __name__ == "__main__":
    cli.run(main)
