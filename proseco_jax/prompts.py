"""Completing text prompts, as a chat model is asked questions: each prompt keeps its tokens and is followed
by the same number G of generated positions (LLaDA's gen_length), and prompts of equal length share batches
(one compiled program per length).

`chat_tokenizer`, `encode_prompts` and `completion` turn text into prompt ids and generated ids back into
the completion's text; `prepare_prompts` checks and encodes a run before anything compiles;
`sample_prompts` draws it batch by batch, `complete_prompts` turns the batches into samples-file records and
`write_completions` writes them through the one resume-and-append flow of `inference.write_samples`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from proseco_jax import config_base
from proseco_jax.config_base import Config
from proseco_jax.data.chat import TOKENIZER_JSON, ChatTokenizer
from proseco_jax.errors import UsageError
from proseco_jax.fileio import NFE_KEYS
from proseco_jax.inference import LoadedModel, to_host, write_samples
from proseco_jax.sampling import Sampler
from proseco_jax.sampling.settings import geometry_problem


def chat_tokenizer(config: Config, workdir: str = "", path: str = ""):
    """The Hugging Face tokenizer (`data.chat.ChatTokenizer`) that prompts are written with: `path` (a
    directory or hub id) if given, else the workdir's recorded `data.tokenizer_path` when it is a tokenizer
    directory, else the workdir itself when it holds tokenizer.json (a converted checkpoint directory)."""
    candidates = [path] if path else [config.data.tokenizer_path, workdir]
    for candidate in candidates:
        if path or (candidate and os.path.isfile(os.path.join(candidate, TOKENIZER_JSON))):
            tokenizer = ChatTokenizer.load(candidate)
            if tokenizer.vocab_size > config.output_vocab_size:
                raise UsageError(f"tokenizer {candidate} has {tokenizer.vocab_size} ids but the model reads "
                                 f"{config.output_vocab_size}: it is not this model's tokenizer")
            return tokenizer
    raise UsageError("text prompts need the model's tokenizer: pass --tokenizer=DIR (a Hugging Face "
                     "tokenizer directory with tokenizer.json), or record it as data.tokenizer_path")


Prompt = str | Sequence[Mapping[str, Any]]  # a text, or chat messages [{role, content}, ...]


def encode_prompts(tokenizer, prompts: Sequence[Prompt], *, chat: bool) -> list[list[int]]:
    """The ids of each prompt: with `chat`, its chat template applied with the generation prompt (a text
    is one user message); without, BOS (when the tokenizer has one) and the text (messages are an error).
    UsageError (one line) for a prompt whose text has no tokens, and for `chat` with a tokenizer that has
    no chat template."""
    if chat and not tokenizer.has_template:
        raise UsageError(f"--chat needs a chat template, and the tokenizer {tokenizer.origin} has none (no "
                         "chat_template in tokenizer_config.json, no chat_template.jinja): drop --chat to "
                         "prompt with the text as it is")
    out = []
    for i, prompt in enumerate(prompts):
        texts = [prompt] if isinstance(prompt, str) else [str(m.get("content", "")) for m in prompt]
        if not any(tokenizer.encode(text) for text in texts):
            raise UsageError(f"prompt {i} ({str(prompt)[:40]!r}) has no tokens: give the text to complete")
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
    """G, the positions generated after every prompt: `gen_length`, or (0) the most that the longest prompt
    leaves of the sequence (data.length) and the sampler can fill: for the block sampler, whole blocks
    whose number divides sampling.steps, at least one position per step (`settings.geometry_problem`).
    UsageError (one line) stating the rule that a prompt or G breaks."""
    length = config.data.length
    if not prompts:
        raise UsageError("no prompts to sample")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    size = len(prompts[longest])
    if size == 0:
        raise UsageError(f"prompt {longest} is empty")
    room = length - size
    block = settings.block_length if settings.kind.blocked else None
    if gen_length > 0:
        generated = gen_length
    else:
        fits = [n for n in range(room, 0, -1) if not geometry_problem(settings, n, block_length=block)]
        generated = fits[0] if fits else room
    if generated > room or room < 1:
        raise UsageError(f"prompt {longest} has {size} tokens: with {max(generated, 1)} generated it is "
                         f"longer than the sequence (data.length={length})")
    problem = geometry_problem(settings, generated, block_length=block)
    if problem and gen_length > 0:
        raise UsageError(f"--gen_length={gen_length}: {problem}")
    if problem:
        rule = (f"whole blocks of sampling.block_length={block} whose number divides sampling.steps="
                f"{settings.steps}, " if block else "")
        raise UsageError(f"prompt {longest} has {size} tokens and leaves {room} positions of the sequence "
                         f"(data.length={length}); the {settings.sampler!r} sampler generates {rule}at least "
                         f"one position per step (sampling.steps={settings.steps}), which {room} positions "
                         "cannot hold: lower sampling.steps or pass --gen_length")
    return generated


def with_eos(settings: config_base.Sampling, eos_id: int | None) -> config_base.Sampling:
    """settings whose block sampler stops at `eos_id` (the tokenizer's) when it names no eos_id of its own."""
    if not settings.kind.blocked or settings.eos_id >= 0 or eos_id is None:
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

    start: how many jobs (in `prompt_jobs` order) are already done; job i draws from fold_in(rng, i) alone,
    so with `stop_on_eos='sample'` (or no EOS stop) a run resumed at any `start` or batch size draws what the
    uninterrupted run would have ('batch' stops a batch together, tying a sample to its batchmates).
    Yields (the batch's jobs, numpy dict: tokens [b, P + G] with the prompt in front, nfe / predictor_nfe /
    corrector_nfe [b]). A batch short of `settings.batch_size` is filled with copies of its last prompt,
    whose samples are dropped, so every batch of one prompt length runs one compiled program.
    """
    config = loaded.config
    settings = config.sampling if settings is None else settings
    rng = jax.random.key(config.seed if seed is None else seed)
    sampler = loaded.sampler
    first = 0  # jobs before the batch, in prompt_jobs order
    for jobs in prompt_jobs(prompts, samples_per_prompt, settings.batch_size):
        skip = min(max(start - first, 0), len(jobs))
        first, jobs = first + skip, jobs[skip:]
        if not jobs:
            continue
        rows = [prompts[job.prompt] for job in jobs]
        prompt = np.asarray(rows + [rows[-1]] * (settings.batch_size - len(rows)), np.int32)
        out = sampler.sample(settings, rng, settings.batch_size, prompt.shape[1] + gen_length, prompt=prompt,
                             first_index=first)
        yield jobs, {key: to_host(getattr(out, key))[: len(jobs)] for key in ("tokens", *NFE_KEYS)}
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

    def check_sampler(self, sampler: Sampler) -> None:
        """The SamplingError (one line) that drawing some prompt of this run with `sampler` would raise."""
        for ids in self.ids:
            sampler.check(self.settings, self.settings.batch_size, len(ids) + self.gen_length,
                          prompt=np.asarray(ids, np.int32))

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
    own eos_id, and then each sample at its own: `stop_on_eos='sample'`, so that a samples file's records do
    not depend on their batchmates, hence not on the batch size or on where a run resumed) and G; every
    problem is a one-line UsageError found before anything compiles."""
    settings = (config.sampler_settings if settings is None else settings.resolved(
        config.diffusion.parameterization))
    prompts = [r["messages"] if chat and r.get("messages") else r.get("prompt", r.get("messages"))
               for r in records]
    ids = encode_prompts(tokenizer, prompts, chat=chat)
    if stop_at_eos:
        settings = with_eos(settings, tokenizer.eos_id)
    if settings.kind.blocked and settings.eos_id >= 0:
        settings = settings.replace(stop_on_eos="sample")
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
                         **{key: int(out[key][i]) for key in NFE_KEYS}})
        yield rows


def write_completions(config: Config, workdir: str, tokenizer, run: PromptRun, path: str, *, resume: bool,
                      primary: bool = True, say: Callable[..., None] = print) -> bool:
    """Samples `run` with the model of `workdir` into the JSONL `path` (`inference.write_samples`: resuming
    after the samples it holds, which must be this run's first ones, unless `resume` is False). Returns
    whether the file then holds every sample."""
    s = run.settings

    def describe(loaded: LoadedModel, left: int) -> str:
        return (f"completing {len(run.ids)} prompts x {run.samples_per_prompt} ({left} samples left) into "
                f"{path} (checkpoint step {loaded.step}): {s.sampler}, T={s.steps}, {run.gen_length} "
                f"generated positions, eos_id={s.eos_id}, batches of {s.batch_size}")

    return write_samples(config, workdir, path, total=len(run.ids) * run.samples_per_prompt,
                         draw=lambda loaded, done: complete_prompts(loaded, tokenizer, run, start=done),
                         describe=describe, resume=resume, primary=primary, check_written=run.check_written,
                         check=run.check_sampler, say=say)
