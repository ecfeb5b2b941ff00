"""Loading a trained denoiser for sampling and evaluation: the latest checkpoint's EMA parameters of a
workdir, placed on a mesh, and the pure `apply_fn(params, tokens, sigma) -> logits` that samplers take.

Sampling comes in two forms: `sample_batches` draws unconditional samples (or ones after one fixed prompt
of token ids), `sample_prompts` completes many prompts of different lengths, as a chat model is asked
questions: each prompt keeps its tokens and is followed by the same number G of generated positions
(LLaDA's gen_length), and prompts of equal length share batches (one compiled program per length).
`chat_tokenizer`, `encode_prompts` and `completion` turn text into prompt ids and generated ids back into
the completion's text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from proseco_jax import config_base, configlib, sampling, schedules
from proseco_jax.config_base import Config
from proseco_jax.errors import UsageError
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


def load_model(config: Any, workdir: str, *, mesh: Mesh | None = None, use_ema: bool = True) -> LoadedModel:
    """Restores the latest checkpoint's (EMA) parameters of `workdir` for the model of `config`.

    Raises UsageError (one line) when the workdir has no checkpoint or it does not fit the config.
    """
    placed = ModelOnMesh.create(config_base.resolve(config), mesh)
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


def _to_host(x: jax.Array) -> np.ndarray:
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
    from proseco_jax.data import datasets, tokenizers

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

    Batch k draws with the key fold_in(rng, index of its first sample), so a run resumed at `start` (a
    multiple of the batch size) continues exactly as the uninterrupted run would have.

    settings: the sampler (default: the loaded config's `sampling` section, preset applied).
    Yields numpy dicts: tokens [b, L], nfe / predictor_nfe / corrector_nfe [b], history [T, b, L] if asked.
    Each batch is one call of the compiled sampler, its batch sharded over the mesh's data axes.
    """
    config = loaded.config
    if num_samples <= 0:
        raise UsageError(f"the number of samples must be positive, got {num_samples}")
    settings = (config.sampling if settings is None else settings).resolved(config.diffusion.parameterization)
    schedule = schedules.Schedule(config.diffusion)
    rng = jax.random.key(config.seed if seed is None else seed)
    sample = loaded.placed.under_mesh(sampling.sample)
    # float64 sampling math needs jax's x64 mode: on for the sampler only, training and the model stay fp32.
    float64 = settings.precision == "float64"
    done = start
    while done < num_samples:
        with jax.enable_x64(True) if float64 else contextlib.nullcontext():
            out = sample(loaded.apply_fn, loaded.params, settings, jax.random.fold_in(rng, done),
                         schedule=schedule, mask_id=config.mask_id, batch_size=settings.batch_size,
                         length=config.data.length, mesh=loaded.mesh, prompt=prompt, return_history=history,
                         vocab_size=config.output_vocab_size)
        take = min(settings.batch_size, num_samples - done)
        result = {key: _to_host(getattr(out, key))[:take]
                  for key in ("tokens", "nfe", "predictor_nfe", "corrector_nfe")}
        if history:
            result["history"] = _to_host(out.history)[:, :take]
        yield result
        done += take


# ------------------------------------------------------------------------------------------ text prompts


def chat_tokenizer(config: Config, workdir: str = "", path: str = ""):
    """The Hugging Face tokenizer (`data.chat.ChatTokenizer`) that prompts are written with: `path` (a
    directory or hub id) if given, else the workdir's recorded `data.tokenizer_path` when it is a tokenizer
    directory, else the workdir itself when it holds tokenizer.json (a converted checkpoint directory)."""
    from proseco_jax.data import chat

    candidates = [path] if path else [config.data.tokenizer_path, workdir]
    for candidate in candidates:
        if path or (candidate and os.path.isfile(os.path.join(candidate, chat.TOKENIZER_JSON))):
            tokenizer = chat.ChatTokenizer.load(candidate)
            if tokenizer.vocab_size > config.output_vocab_size:
                raise UsageError(f"tokenizer {candidate} has {tokenizer.vocab_size} ids but the model reads "
                                 f"{config.output_vocab_size}: it is not this model's tokenizer")
            return tokenizer
    raise UsageError("text prompts need the model's tokenizer: pass --tokenizer=DIR (a Hugging Face "
                     "tokenizer directory with tokenizer.json), or record it as data.tokenizer_path")


Prompt = str | Sequence[Mapping[str, Any]]  # a text, or chat messages [{role, content}, ...]


def encode_prompts(tokenizer, prompts: Sequence[Prompt], *, chat: bool) -> list[list[int]]:
    """The ids of each prompt: with `chat`, its chat template applied with the generation prompt (a text
    is one user message); without, BOS (when the tokenizer has one) and the text (messages are an error)."""
    out = []
    for i, prompt in enumerate(prompts):
        if chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            out.append(tokenizer.prompt_ids(messages, add_generation_prompt=True))
        elif isinstance(prompt, str):
            bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
            out.append(bos + tokenizer.encode(prompt))
        else:
            raise UsageError(f"prompt {i} is a list of chat messages: pass --chat to apply the chat template")
    return out


def generation_length(config: Config, settings: config_base.Sampling, prompts: Sequence[Sequence[int]],
                      gen_length: int = 0) -> int:
    """G, the positions generated after every prompt: `gen_length`, or (0) what the longest prompt leaves of
    the sequence (data.length), rounded down to whole blocks for the block sampler. UsageError (one line)
    when a prompt leaves no room."""
    length = config.data.length
    if not prompts:
        raise UsageError("no prompts to sample")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    size = len(prompts[longest])
    if size == 0:
        raise UsageError(f"prompt {longest} is empty")
    block = settings.block_length if settings.sampler == "llada_block" else 1
    generated = gen_length if gen_length > 0 else (length - size) // block * block
    if size + max(generated, 1) > length:
        raise UsageError(f"prompt {longest} has {size} tokens: with {max(generated, 1)} generated it is "
                         f"longer than the sequence (data.length={length})")
    if generated < block:
        raise UsageError(f"prompt {longest} has {size} tokens and leaves {length - size} positions of the "
                         f"sequence (data.length={length}), less than one block of {block}")
    return generated


def with_eos(settings: config_base.Sampling, eos_id: int | None) -> config_base.Sampling:
    """settings whose block sampler stops at `eos_id` (the tokenizer's) when it names no eos_id of its own."""
    if settings.sampler != "llada_block" or settings.eos_id >= 0 or eos_id is None:
        return settings
    return settings.replace(eos_id=int(eos_id))


def stop_ids(tokenizer) -> set[int]:
    """Ids a completion ends at: the EOS id and the end-of-turn token(s) the chat template closes an answer
    with (special tokens, e.g. LLaDA's <|eot_id|>), found by rendering a one-turn example."""
    ids = {tokenizer.eos_id}
    try:
        example, prompt_len = tokenizer.example_ids([{"role": "user", "content": "x"}], "y")
    except UsageError:
        return ids
    for token in reversed(example[prompt_len:]):
        if tokenizer.decode([token]) != "":  # The answer's own text: the closing tokens end here.
            break
        ids.add(int(token))
    return ids


def completion(tokens: np.ndarray, prompt_len: int, stops: set[int], mask_id: int) -> list[int]:
    """The generated ids of one sample (tokens int [L]) before the first stop id (or a [MASK] left over)."""
    out = []
    for token in tokens[prompt_len:].tolist():
        if token in stops or token == mask_id:
            break
        out.append(int(token))
    return out


@dataclasses.dataclass(frozen=True)
class PromptJob:
    """One sample to draw: sample `sample` of prompt `prompt` (indices into the caller's list)."""

    prompt: int
    sample: int


def prompt_jobs(prompts: Sequence[Sequence[int]], samples_per_prompt: int, batch_size: int
                ) -> list[list[PromptJob]]:
    """The batches `sample_prompts` draws, in order: prompts sorted by length (then index), each repeated
    `samples_per_prompt` times, cut into batches of at most `batch_size` jobs of one prompt length."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    batches: list[list[PromptJob]] = []
    for i in order:
        for k in range(samples_per_prompt):
            last = batches[-1] if batches else None
            if last and len(last) < batch_size and len(prompts[last[0].prompt]) == len(prompts[i]):
                last.append(PromptJob(i, k))
            else:
                batches.append([PromptJob(i, k)])
    return batches


def sample_prompts(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[int]],
    *,
    gen_length: int,
    samples_per_prompt: int = 1,
    start: int = 0,
    settings: config_base.Sampling | None = None,
    seed: int | None = None,
) -> Iterator[tuple[list[PromptJob], dict[str, np.ndarray]]]:
    """Completes each prompt (ids) with `gen_length` generated positions, batch by batch of `prompt_jobs`.

    start: how many jobs (in `prompt_jobs` order) are already done; a run resumed there at a batch boundary
    draws what the uninterrupted run would have (batch k's key is fold_in(rng, jobs before it)).
    Yields (the batch's jobs, numpy dict: tokens [b, P + G] with the prompt in front, nfe / predictor_nfe /
    corrector_nfe [b]). A batch short of `settings.batch_size` is filled with copies of its last prompt,
    whose samples are dropped, so every batch of one prompt length runs one compiled program.
    """
    config = loaded.config
    settings = (config.sampling if settings is None else settings).resolved(config.diffusion.parameterization)
    schedule = schedules.Schedule(config.diffusion)
    rng = jax.random.key(config.seed if seed is None else seed)
    sample = loaded.placed.under_mesh(sampling.sample)
    float64 = settings.precision == "float64"
    first = 0  # jobs before the batch, in prompt_jobs order
    for jobs in prompt_jobs(prompts, samples_per_prompt, settings.batch_size):
        skip = min(max(start - first, 0), len(jobs))
        first, jobs = first + skip, jobs[skip:]
        if not jobs:
            continue
        rows = [prompts[job.prompt] for job in jobs]
        prompt = np.asarray(rows + [rows[-1]] * (settings.batch_size - len(rows)), np.int32)
        with jax.enable_x64(True) if float64 else contextlib.nullcontext():
            out = sample(loaded.apply_fn, loaded.params, settings, jax.random.fold_in(rng, first),
                         schedule=schedule, mask_id=config.mask_id, batch_size=settings.batch_size,
                         length=prompt.shape[1] + gen_length, mesh=loaded.mesh, prompt=prompt,
                         vocab_size=config.output_vocab_size)
        yield jobs, {key: _to_host(getattr(out, key))[: len(jobs)]
                     for key in ("tokens", "nfe", "predictor_nfe", "corrector_nfe")}
        first += len(jobs)


@dataclasses.dataclass(frozen=True)
class PromptRun:
    """Text prompts ready to sample: their records, ids, the settings (EOS stop resolved) and G."""

    records: list[dict[str, Any]]  # each with `prompt` (text) and/or `messages`, plus fields kept as is
    ids: list[list[int]]
    settings: config_base.Sampling
    gen_length: int
    samples_per_prompt: int
    stops: frozenset[int]

    def jobs(self) -> list[PromptJob]:
        """Every sample in the order they are drawn and written."""
        return [job for batch in prompt_jobs(self.ids, self.samples_per_prompt, self.settings.batch_size)
                for job in batch]

    def check_written(self, records: Sequence[Mapping[str, Any]], path: str) -> None:
        """UsageError unless `records` (a samples file being resumed) are this run's first samples."""
        expected = [(job.prompt, job.sample) for job in self.jobs()[: len(records)]]
        if [(r.get("prompt_index"), r.get("sample_index")) for r in records] != expected:
            raise UsageError(f"{path} holds samples of other prompts or settings; use --noresume to "
                             "overwrite it")


def prepare_prompts(config: Config, tokenizer, records: Sequence[Mapping[str, Any]], *, chat: bool,
                    gen_length: int = 0, samples_per_prompt: int = 1, stop_at_eos: bool = True,
                    settings: config_base.Sampling | None = None) -> PromptRun:
    """Encodes prompt records (`messages` with `chat`, else `prompt`; see `encode_prompts`), resolves the
    sampler (the block sampler stops at the tokenizer's EOS unless `stop_at_eos` is False or it names its
    own eos_id) and G; every problem is a one-line UsageError found before anything compiles."""
    settings = (config.sampler_settings if settings is None else settings.resolved(
        config.diffusion.parameterization))
    prompts = [r["messages"] if chat and r.get("messages") else r.get("prompt", r.get("messages"))
               for r in records]
    ids = encode_prompts(tokenizer, prompts, chat=chat)
    if stop_at_eos:
        settings = with_eos(settings, tokenizer.eos_id)
    return PromptRun(records=[dict(r) for r in records], ids=ids, settings=settings,
                     gen_length=generation_length(config, settings, ids, gen_length),
                     samples_per_prompt=samples_per_prompt, stops=frozenset(stop_ids(tokenizer)))


def complete_prompts(loaded: LoadedModel, tokenizer, run: PromptRun, *, start: int = 0
                     ) -> Iterator[list[dict[str, Any]]]:
    """The samples of `run` from job `start` on, as the records a samples file holds, one list per batch:
    the prompt record's fields, `prompt_index`, `sample_index`, `prompt_length`, `tokens` (prompt and
    generated positions), `completion_ids` (the generated ids before the first EOS / end-of-turn id),
    `text` (their decoded text, special tokens left out), `nfe`, `predictor_nfe`, `corrector_nfe`."""
    mask_id = loaded.config.mask_id
    for jobs, out in sample_prompts(loaded, run.ids, gen_length=run.gen_length,
                                    samples_per_prompt=run.samples_per_prompt, start=start,
                                    settings=run.settings):
        rows = []
        for i, job in enumerate(jobs):
            tokens, prompt_len = out["tokens"][i], len(run.ids[job.prompt])
            ids = completion(tokens, prompt_len, set(run.stops), mask_id)
            rows.append({**run.records[job.prompt], "prompt_index": job.prompt, "sample_index": job.sample,
                         "prompt_length": prompt_len, "tokens": tokens.tolist(), "completion_ids": ids,
                         "text": tokenizer.decode(ids),
                         **{key: int(out[key][i]) for key in ("nfe", "predictor_nfe", "corrector_nfe")}})
        yield rows


def write_completions(config: Config, workdir: str, tokenizer, run: PromptRun, path: str, *, resume: bool,
                      primary: bool = True, say: Callable[..., None] = print) -> bool:
    """Samples `run` with the model of `workdir` into the JSONL `path`, resuming after the samples it holds
    (which must be this run's first ones) unless `resume` is False; process 0 alone writes. Returns whether
    the file then holds every sample (False: a signal stopped it after a whole batch; a rerun continues)."""
    from proseco_jax import samples_io, stopping

    total = len(run.ids) * run.samples_per_prompt
    done = samples_io.prepare_output(path, resume=resume) if primary else 0
    if primary and done:
        run.check_written(samples_io.read_jsonl(path), path)
    done = stopping.agreed_value(done)  # Every process draws the same remaining samples.
    if done >= total:
        say(f"{path} already holds {done} samples (asked for {total}); nothing to do", flush=True)
        return True
    loaded = load_model(config, workdir)
    s = run.settings
    say(f"completing {len(run.ids)} prompts x {run.samples_per_prompt} ({total - done} samples left) into "
        f"{path} (checkpoint step {loaded.step}): {s.sampler}, T={s.steps}, {run.gen_length} generated "
        f"positions, eos_id={s.eos_id}, batches of {s.batch_size}", flush=True)
    done = samples_io.write_batches(complete_prompts(loaded, tokenizer, run, start=done), path, done=done,
                                    total=total, step=loaded.step, primary=primary, say=say)
    return done >= total
