"""Loading a trained denoiser for sampling and evaluation (the latest checkpoint's EMA parameters of a
workdir, placed on a mesh, with its `sampling.Sampler`), drawing unconditional samples, and writing samples
files.

`sample_batches` draws unconditional samples (or ones after one fixed prompt of token ids) batch by batch;
`sample_records` turns them into the records a samples file holds; `write_samples` is the one
resume-and-append flow that writes a samples file, used for these and for text prompts (`prompts.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from proseco_jax import config_base, configlib, samples_io, stopping
from proseco_jax.config_base import Config
from proseco_jax.data import datasets, tokenizers
from proseco_jax.errors import UsageError
from proseco_jax.fileio import NFE_KEYS
from proseco_jax.sampling import Sampler
from proseco_jax.state import ModelOnMesh


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A denoiser ready to sample: the model on its mesh, its parameters and the step they were saved at."""

    placed: ModelOnMesh
    params: Any
    step: int

    @property
    def config(self) -> Config:
        return self.placed.config

    @property
    def mesh(self) -> Mesh:
        return self.placed.mesh

    @property
    def apply_fn(self):
        """`apply_fn(params, tokens [B, L], sigma [B]) -> logits [B, L, V+1]` (inference mode); one function
        object per model, so compiled samplers are reused across calls."""
        return self.placed.apply_fn

    @property
    def sampler(self) -> Sampler:
        """The sampler of this model, its parameters and mesh."""
        return Sampler.for_model(self.placed, self.params)


def load_model(config: Any, workdir: str, *, mesh: Mesh | None = None, use_ema: bool = True,
               like: LoadedModel | None = None) -> LoadedModel:
    """Restores the latest checkpoint's (EMA) parameters of `workdir` for the model of `config`; onto the
    model of `like` (a model of the same shapes) when given, so the samplers compiled for it are reused.

    Raises UsageError (one line) when the workdir has no checkpoint or it does not fit the config.
    """
    placed = like.placed if like is not None else ModelOnMesh.create(config_base.resolve(config), mesh)
    step, params = placed.restore_params(workdir, use_ema=use_ema)
    if not all(bool(jax.numpy.all(jax.numpy.isfinite(leaf))) for leaf in jax.tree.leaves(params)):
        raise UsageError(f"the checkpoint at step {step} in {workdir} has non-finite parameters: the run "
                         "diverged; sample from an earlier checkpoint")
    return LoadedModel(placed=placed, params=params, step=step)


def workdir_config(workdir: str) -> Config:
    """The config recorded in workdir/config.json (written by training and by launch/convert.py)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"{workdir} has no config.json; pass --config, or use a workdir written by "
                         "launch/train.py or launch/convert.py")
    try:
        with open(path, encoding="utf-8") as f:
            return config_base.resolve(json.load(f))
    except (OSError, ValueError, UsageError) as e:
        raise UsageError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None


def load_workdir(workdir: str, mesh: Mesh | None = None, *, use_ema: bool = True) -> LoadedModel:
    """`load_model` with the config recorded in the workdir: no config file needed."""
    return load_model(workdir_config(workdir), workdir, mesh=mesh, use_ema=use_ema)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a global array on every process (with several processes each holds only its rows)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_workdir_config(config: Config, workdir: str) -> None:
    """UsageError naming the fields where `config` differs from the model recorded in workdir/config.json
    (its `model` section, data.vocab_size and data.length), so a sampler never runs a model on shapes it
    was not trained for. Nothing is checked when the workdir has no config.json."""
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        return
    recorded = workdir_config(workdir)
    ignored = ("preset", "dropout", "remat")  # They do not change what a trained model computes.
    fields = [f"model.{k}" for k in configlib.to_dict(config.model) if k not in ignored]
    fields += ["data.vocab_size", "data.length"]
    differ = [f"{name}={configlib.get(config, name)!r} (trained with {configlib.get(recorded, name)!r})"
              for name in fields if configlib.get(config, name) != configlib.get(recorded, name)]
    if differ:
        raise UsageError(f"the config does not match the model trained in {workdir}: {'; '.join(differ[:4])}")


def text_decoder(config: Config, warn: Callable[[str], None] = print) -> Callable[[np.ndarray], str]:
    """tokens int [L] -> the text a samples file records: the corpus's tokenizer decodes text corpora; the
    Markov language has no surface form, so its tokens read 'tN'. When the tokenizer cannot be had (a
    trained BPE whose corpus is not prepared here, a GPT-2 tokenizer offline), ids are written instead and
    `warn` says why, in one line."""
    if config.data.name == "markov":
        return lambda tokens: " ".join(f"t{int(t)}" for t in tokens)
    try:
        # Trained (bpe:N) or built (smiles) with the corpus and saved next to it.
        if config.data.tokenizer.startswith("bpe:") or config.data.tokenizer == "smiles":
            tokenizer = datasets.load(config.data).tokenizer
        else:
            tokenizer = tokenizers.load(config.data.tokenizer, config.data.tokenizer_path)
    except UsageError as e:
        warn(f"text is written as token ids: {str(e).splitlines()[0]}")
        return lambda tokens: " ".join(str(int(t)) for t in tokens)
    return tokenizer.decode


def sample_batches(
    loaded: LoadedModel,
    num_samples: int,
    *,
    start: int = 0,
    settings: config_base.Sampling | None = None,
    prompt: np.ndarray | None = None,
    history: bool = False,
    seed: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Draws samples start..num_samples-1, batch by batch (`settings.batch_size` each).

    Sample i is a function of fold_in(rng, i) alone (sampling/loop.py), so a run resumed at any `start`,
    with any batch size or mesh, draws exactly the samples of the uninterrupted run.

    settings: the sampler (default: the loaded config's `sampling` section).
    Yields numpy dicts: tokens [b, L], nfe / predictor_nfe / corrector_nfe / step_nfe [b], history
    [T, b, L] if asked.
    Each batch is one call of the compiled sampler, its batch sharded over the mesh's data axes.
    """
    config = loaded.config
    if num_samples <= 0:
        raise UsageError(f"the number of samples must be positive, got {num_samples}")
    settings = config.sampling if settings is None else settings
    rng = jax.random.key(config.seed if seed is None else seed)
    sampler = loaded.sampler
    done = start
    while done < num_samples:
        out = sampler.sample(settings, rng, settings.batch_size, config.data.length, prompt=prompt,
                             first_index=done, history=history)
        take = min(settings.batch_size, num_samples - done)
        result = {key: to_host(getattr(out, key))[:take] for key in ("tokens", *NFE_KEYS, "step_nfe")}
        if history:
            result["history"] = to_host(out.history)[:, :take]
        yield result
        done += take


def sample_records(batches: Iterable[dict[str, np.ndarray]], decode: Callable[[np.ndarray], str],
                   label: int = -1) -> Iterator[list[dict[str, Any]]]:
    """The records a samples file holds, one list per batch of `sample_batches`: `tokens`, `text` (decoded
    by `decode`), the NFE counts and, when drawn, `history`; with a guided `label` (>= 0), that label and
    `step_nfe` (a guided call counted once, the authors' count)."""
    for out in batches:
        rows = []
        for i, tokens in enumerate(out["tokens"]):
            row = {"tokens": tokens.tolist(), "text": decode(tokens),
                   **{key: int(out[key][i]) for key in NFE_KEYS}}
            if label >= 0:
                row.update(label=int(label), step_nfe=int(out["step_nfe"][i]))
            if "history" in out:
                row["history"] = out["history"][:, i].tolist()
            rows.append(row)
        yield rows


def write_samples(config: Config, workdir: str, path: str, *, total: int,
                  draw: Callable[[LoadedModel, int], Iterable[list[dict[str, Any]]]],
                  describe: Callable[[LoadedModel, int], str], resume: bool, primary: bool = True,
                  check_written: Callable[[list[dict[str, Any]], str], None] | None = None,
                  check: Callable[[Sampler], None] | None = None,
                  say: Callable[..., None] = print) -> bool:
    """Writes `total` samples of the model of `workdir` into the JSONL `path`, appending each batch of
    records that `draw(loaded, done)` yields after the `done` samples the file already holds (checked by
    `check_written(records, path)` when given) unless `resume` is False; process 0 alone writes, after
    saying `describe(loaded, samples left)`. The model is loaded only when something is left to draw, and
    the file is created or changed only once the model loaded and `check(sampler)` (when given: e.g.
    `Sampler.check` of the draws to come) found nothing wrong.
    Returns whether the file then holds every sample (False: a signal stopped it after a whole batch; a
    rerun continues)."""
    held = samples_io.held_samples(path) if primary and resume else []
    if held and check_written is not None:
        check_written(held, path)
    done = stopping.agreed_value(len(held))  # Every process draws the same remaining samples.
    if done >= total:
        if primary:
            samples_io.prepare_output(path, resume=True)  # Cuts a torn last line.
        say(f"{path} already holds {done} samples (asked for {total}); nothing to do", flush=True)
        return True
    loaded = load_model(config, workdir)
    if check is not None:
        check(loaded.sampler)
    if primary:
        samples_io.prepare_output(path, resume=resume)
    say(describe(loaded, total - done), flush=True)
    done = samples_io.write_batches(draw(loaded, done), path, done=done, total=total, step=loaded.step,
                                    primary=primary, say=say)
    return done >= total
