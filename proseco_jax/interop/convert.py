"""Reference checkpoints to workdirs and back.

`import_checkpoint` turns a reference DiT (`sources.Source`), and `import_llada` a LLaDA checkpoint
(`interop.llada`), into a workdir that every binary reads like a trained one: `config.json` with the
model's shape from the source and everything else from a base config, and an orbax checkpoint at step 0
whose train state holds the converted weights as both `params` and `ema_params`, with a freshly
initialised optimizer state. `export_checkpoint` writes a workdir's EMA weights back as the authors'
Hugging Face model (config.json + model.safetensors). A SMILES model (the base config's data.name='qm9')
numbers its tokens as the prepared corpus's vocabulary does, and the authors' as theirs (`<mask>` = 2, see
`smiles.SmilesTokenizer.reference_order`): the embedding and output rows are permuted into our order on
import (the authors' order from the source's vocab.json, else ours after their specials) and back on
export, which writes that vocab.json beside the weights. A LLaDA checkpoint of any size brings its own
token ids: its config.json's vocabulary, mask_token_id and eos_token_id replace the base config's, which
fill in only what config.json does not name. Both first read and check everything, then write
into a hidden directory next to the target and rename it at the end, so bad input or a crash never leaves
a half-written workdir.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from proseco_jax import checkpoint, config_base, configlib, inference, sharding, train
from proseco_jax.config_base import Config
from proseco_jax.data import datasets
from proseco_jax.data.smiles import REFERENCE_SPECIALS, SmilesTokenizer
from proseco_jax.errors import UsageError
from proseco_jax.interop import layout, sources
from proseco_jax.interop import llada as llada_hf
from proseco_jax.interop.staging import check_new_directory, staged_directory
from proseco_jax.models import dit
from proseco_jax.state import ModelOnMesh, TrainState

GPT2_VOCAB = 50257  # Real tokens of the GPT-2 tokenizer (the reference adds [MASK] = 50257).


def is_text_model(ref: layout.ReferenceConfig) -> bool:
    """Whether the model's vocabulary is GPT-2's plus [MASK] (an OpenWebText model)."""
    return ref.vocab_size == GPT2_VOCAB + 1


def config_for(ref: layout.ReferenceConfig, base: ml_collections.ConfigDict) -> Config:
    """`base` with the model shape, vocabulary and length of `ref` written in."""
    config = copy.deepcopy(base)
    model, data = config.model, config.data
    if model.name != "dit":
        raise UsageError(f"the base config's model.name={model.name!r}; a reference DiT needs 'dit'")
    shape = dict(num_layers=ref.n_blocks, hidden_size=ref.hidden_dim, num_heads=ref.n_heads,
                 cond_dim=ref.cond_dim)
    model.update(shape)
    model.preset = next((name for name, p in dit.PRESETS.items() if p == shape), model.preset)
    model.update(max_length=ref.model_length, dropout=ref.dropout, time_conditioning=ref.time_conditioning,
                 num_classes=ref.num_classes)
    data.update(vocab_size=ref.vocab_size - 1, length=ref.model_length)
    if is_text_model(ref):
        data.name = "owt"
    elif data.name != "qm9":  # Any other vocabulary is scored as a Markov language of that size.
        data.update(name="markov", successors=min(data.successors, data.vocab_size))
    return config_base.resolve(config)


def smiles_tokenizer(config: Config) -> SmilesTokenizer | None:
    """The vocabulary of the corpus a SMILES model's config names (prepared if need be), else None."""
    if config.data.name != "qm9":
        return None
    return datasets.load(config.data).tokenizer


def _reference_names(tokenizer: SmilesTokenizer) -> tuple[str, ...]:
    """The tokens an exported SMILES model's vocab.json lists after the authors' specials: ours in our
    order, then a placeholder for each spare id (the authors' vocabulary has no unused ids)."""
    spare = tokenizer.vocab_size - len(REFERENCE_SPECIALS) + 1 - len(tokenizer.tokens)
    return (*tokenizer.tokens, *(f"<unused{i}>" for i in range(spare)))


def _one_device_mesh() -> jax.sharding.Mesh:
    """Conversion runs in one process on one device, whatever mesh the config trains on."""
    return sharding.make_mesh(config_base.Mesh(), jax.devices()[:1])


def _train_state(placed: ModelOnMesh, params: dict[str, Any], config: Config) -> TrainState:
    """Step 0 of training from `params` (host arrays, or arrays already in their shardings): params =
    ema_params, and the optimizer's initial state."""
    tx = train.make_optimizer(config.train)
    abstract, shardings, _ = placed.train_state(tx)

    def put(x, a, s):
        placed = isinstance(x, jax.Array) and x.sharding == s
        return x if placed else jax.device_put(np.asarray(x, a.dtype), s)

    weights = jax.tree.map(put, params, abstract.params, shardings.params)
    opt_state = placed.under_mesh(jax.jit(tx.init, out_shardings=shardings.opt_state))(weights)
    step = jax.device_put(np.zeros((), np.int32), shardings.step)
    # The EMA starts as the weights: the same arrays, written twice (training restores two copies).
    return TrainState(step=step, params=weights, ema_params=weights, opt_state=opt_state)


def _write_workdir(workdir: str, config: Config, state: TrainState) -> None:
    """config.json and the step-0 checkpoint, written into a staging directory renamed to `workdir`."""
    with staged_directory(workdir) as staging:
        config_base.save_json(config, staging)
        manager = checkpoint.make_manager(staging, keep=1)
        checkpoint.save(manager, 0, state, None)
        manager.wait_until_finished()
        manager.close()


def import_checkpoint(source: sources.Source, workdir: str,
                      base: ml_collections.ConfigDict | None = None) -> Config:
    """Writes `workdir` (which must not exist, or be empty) from the reference DiT `source`; returns its
    config. `base`: the config the settings not read from the source come from (default: `get_config()`)."""
    check_new_directory(workdir, "--workdir")
    config = config_for(source.config, config_base.get_config() if base is None else base)
    placed = ModelOnMesh.create(config, _one_device_mesh())
    padded_vocab = config.model.padded_vocab_size(config.mask_id + 1)
    tokenizer = smiles_tokenizer(config)
    order = None if tokenizer is None else tokenizer.reference_order(source.vocabulary)
    params = layout.to_params(source.tensors, source.config, padded_vocab, source.origin, order)
    layout.check_tree(params, placed.abstract_params())
    _write_workdir(workdir, config, _train_state(placed, params, config))
    return config


def _token_id(ckpt: llada_hf.Checkpoint, name: str, fallback: int, fallback_label: str) -> int:
    """The checkpoint's config.json `name` (a real token id of its table: not [MASK]), else `fallback`
    (the base config's, named `fallback_label` in the message when it is no id of this table either)."""
    value = ckpt.hf_config.get(name)
    rows, mask = ckpt.model.vocab_size, ckpt.model.mask_token_id
    real = lambda i: not isinstance(i, bool) and isinstance(i, int) and 0 <= i < rows and i != mask
    if value is None:
        if not (real(fallback) or fallback == -1):  # -1: the base config stops at no EOS.
            raise UsageError(f"{ckpt.origin}'s {sources.HF_CONFIG} names no {name} and the base config's "
                             f"{fallback_label}={fallback} is no token of its {rows} ids ([MASK]={mask}): "
                             f"add {name} to it, or pass a --config whose {fallback_label} is one")
        return fallback
    if not real(value):
        raise UsageError(f"{ckpt.origin}'s {sources.HF_CONFIG} has {name}={value!r}, not a token id of its "
                         f"{rows} ids other than [MASK]={mask}")
    return value


def llada_config_for(ckpt: llada_hf.Checkpoint, base: ml_collections.ConfigDict) -> Config:
    """`base` (a LLaDA config: compute dtype, remat, training and sampling settings) with the checkpoint's
    architecture and token ids (its vocabulary, its [MASK] as the framework's, its eos_token_id as
    sampling.eos_id; the base config's only where config.json names none), and its directory's tokenizer
    when it has one (else the base config's, only for a checkpoint of the base config's vocabulary)."""
    config = copy.deepcopy(base)
    if config.model.name != "llada":
        raise UsageError(f"the base config's model.name={config.model.name!r}; a LLaDA checkpoint needs "
                         "'llada'")
    same_vocabulary = (config.data.vocab_size, config.model.get("vocab_size")) == (
        ckpt.model.mask_token_id, ckpt.model.vocab_size)
    config.sampling.eos_id = _token_id(ckpt, "eos_token_id", config.sampling.eos_id, "sampling.eos_id")
    # No setting reads a pad id (LLaDA pads with EOS): a config.json naming one is only checked.
    _token_id(ckpt, "pad_token_id", config.sampling.eos_id, "sampling.eos_id")
    kept = ("dtype", "param_dtype", "remat")  # How to compute, not what: the base config's.
    config.model.update({k: v for k, v in configlib.to_dict(ckpt.model).items() if k not in kept})
    config.data.vocab_size = ckpt.model.mask_token_id
    config.data.length = min(config.data.length, ckpt.model.max_length)
    directory = os.path.dirname(next(iter(ckpt.files.values())))
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        config.data.tokenizer_path = directory
    elif not same_vocabulary:
        config.data.tokenizer_path = ""  # The base config's tokenizer numbers another vocabulary.
    return config_base.resolve(config)


def import_llada(source: str, workdir: str, base: ml_collections.ConfigDict) -> Config:
    """Writes `workdir` (absent, or empty) from the LLaDA checkpoint at `source` (a model directory or a
    Hub repo id) with the settings of `base`; returns its config.

    The weights are streamed tensor by tensor into their shardings on a mesh of every device, fully
    sharded over its fsdp axis (`llada.load`), so no device and no host holds the whole model at once.
    """
    check_new_directory(workdir, "--workdir")
    ckpt = llada_hf.open_checkpoint(source)
    config = llada_config_for(ckpt, base)
    config = config.replace(mesh=config.mesh.replace(data=1, fsdp=-1, tensor=1))
    placed = ModelOnMesh.create(config, sharding.make_mesh(config.mesh))
    params = llada_hf.load(ckpt, placed.abstract_params())
    _write_workdir(workdir, config, _train_state(placed, params, config))
    return config


def export_checkpoint(workdir: str, output_dir: str) -> layout.ReferenceConfig:
    """Writes the EMA weights of `workdir`'s latest checkpoint to `output_dir` (new, or empty) as the
    reference's Hugging Face model: config.json and model.safetensors, vocabulary padding removed (a
    SMILES model: its rows in the authors' order, and vocab.json)."""
    check_new_directory(output_dir, "--output_dir")
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise UsageError("writing safetensors needs the safetensors package (pip install "
                         "'proseco_jax[convert]')") from None
    loaded = inference.load_workdir(workdir, mesh=_one_device_mesh())
    config = loaded.config
    ref = layout.ReferenceConfig.from_model(config.model, config.mask_id + 1, config.data.length)
    tokenizer = smiles_tokenizer(config)
    names = None if tokenizer is None else _reference_names(tokenizer)
    order = None if tokenizer is None else tokenizer.reference_order(names)
    tensors = layout.from_params(jax.device_get(loaded.params), ref, order)
    with staged_directory(output_dir) as staging:
        with open(os.path.join(staging, sources.HF_CONFIG), "w", encoding="utf-8") as f:
            f.write(json.dumps(ref.to_hf(), indent=2) + "\n")
        if names is not None:
            # The authors' tokenizer file: corpus tokens from 0 (their tokenizer puts its specials first).
            vocab = {t: i for i, t in enumerate(names)}
            with open(os.path.join(staging, sources.VOCAB_JSON), "w", encoding="utf-8") as f:
                f.write(json.dumps(vocab, indent=1) + "\n")
        # transformers loads only safetensors files that declare the PyTorch format.
        save_file(tensors, os.path.join(staging, sources.SAFETENSORS), metadata={"format": "pt"})
    return ref
