"""Converts the authors' MDLM / ProSeCo DiT checkpoints into a workdir, and a workdir back.

    python launch/convert.py --source=kuleshov-group/proseco-owt --workdir=runs/proseco_owt
    python launch/convert.py --source=PATH/last.ckpt --workdir=runs/mine --ema
    python launch/convert.py --export --workdir=runs/mine --output_dir=hf/mine

--source is a Hugging Face model directory (config.json + model.safetensors or pytorch_model.bin), a Hub
repo id (downloaded; needs huggingface_hub and the network), or the reference's Lightning .ckpt (--ema
takes its EMA weights). The new workdir holds config.json (the model's shape from the source; the rest from
configs/owt_small.py for GPT-2-vocabulary models, else the defaults) and a step-0 checkpoint, so
`launch/sample.py --workdir=DIR --output=...` and `launch/evaluate.py --workdir=DIR ...` run on it with no
--config. --export writes the workdir's EMA weights in the authors' Hugging Face layout. Bad input (a path
that is no checkpoint, another architecture, a missing, extra or mis-shaped tensor) is one line and exit
code 2, and nothing is written.
"""

import importlib.util
import os

import ml_collections
from absl import flags

from proseco_jax import cli, config_base
from proseco_jax.interop import convert, layout, sources

_SOURCE = flags.DEFINE_string("source", None, "Reference checkpoint: model directory, Hub repo id or .ckpt.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir to create (import) or to read (--export).",
                               required=True)
_EMA = flags.DEFINE_bool("ema", False, "Lightning .ckpt: convert the EMA weights instead of the raw ones.")
_EXPORT = flags.DEFINE_bool("export", False, "Write --workdir's EMA weights to --output_dir as the authors' "
                            "Hugging Face model.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "--export: the Hugging Face model directory to create.")

OWT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "owt_small.py")


def base_config(ref: layout.ReferenceConfig) -> ml_collections.ConfigDict:
    """configs/owt_small.py for a GPT-2-vocabulary model, else the default config."""
    if not convert.is_text_model(ref):
        return config_base.get_config()
    spec = importlib.util.spec_from_file_location("owt_small", OWT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


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
    source = sources.read(_SOURCE.value, ema=_EMA.value)
    config = convert.import_checkpoint(source, _WORKDIR.value, base_config(source.config))
    weights = "EMA weights" if _EMA.value else "weights"
    print(f"wrote {_WORKDIR.value} from the {weights} of {source.origin}: {config.model.num_layers} layers, "
          f"d={config.model.hidden_size}, data.name={config.data.name}, V={config.data.vocab_size}, "
          f"L={config.data.length}, time_conditioning={config.model.time_conditioning}", flush=True)


if __name__ == "__main__":
    cli.run(main)
