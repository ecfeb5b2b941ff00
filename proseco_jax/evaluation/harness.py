"""The model `proseco_jax` of EleutherAI's lm-evaluation-harness: a trained workdir answers the harness's
requests with the project's sampler and likelihood bound, so benchmark figures come with the harness's
prompts, few-shot examples, stop sequences and answer extraction.

generate_until: each context (BOS, then its text; or the chat template's rendering) is completed by the
sampler of the settings (LLaDA's defaults: the block sampler, 256 generated positions in blocks of 32, one
token per step committed by low confidence, greedy), the completion cut at EOS / end of turn, then at
`max_gen_toks` tokens and at the first of the request's `until` strings. Prompts of one length share batches
(no padding: the model attends to every position, so a pad token would change the answer), as
`prompts.sample_prompts` draws them: one compiled program per prompt length.

loglikelihood: LLaDA's Monte-Carlo estimate of the masked-diffusion bound on log p(x | c) for a
continuation x of length n after a context c that is never masked,

    log p(x | c) >= E_{k ~ U{1..n}} [ (n / k) sum_{i masked} log p_theta(x_i | c, x with k masked) ],

k stratified over the `mc_samples` draws (draw j takes k = floor((u + j) n / mc_samples) + 1 for one
uniform u) and the k positions drawn uniformly; every draw is one row of a batched forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from proseco_jax import config_base, diffusion, fileio, inference, prompts, sharding
from proseco_jax.data.chat import ChatTokenizer
from proseco_jax.errors import UsageError
from proseco_jax.evaluation.code_eval import truncate_at_stop
from proseco_jax.fileio import NFE_KEYS
from proseco_jax.inference import LoadedModel

NAME = "proseco_jax"
UNSUPPORTED = ("proseco_jax does not support: several processes (one host, all its devices), is_greedy "
               "(always False), per-request sampling arguments other than until and max_gen_toks (set them "
               "in model_args), time-conditioned models")
# LLaDA's benchmark settings, under what model_args give and over the workdir's recorded sampling section.
# A recorded preset would overwrite steps and the corrector schedule: it applies only when model_args name it.
LLADA_SAMPLING = {"sampler": "llada_block", "block_length": 32, "remasking": "low_confidence",
                  "temperature": 0.0, "preset": ""}
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(config_base.Sampling))


def harness_settings(recorded: config_base.Sampling, overrides: Mapping[str, Any], gen_length: int,
                     batch_size: int) -> config_base.Sampling:
    """The sampler the harness runs: `overrides` (sampling fields from model_args) over LLaDA's settings
    (steps = gen_length: one token per step) over `recorded`; the batch rounded up to whole data shards."""
    unknown = sorted(set(overrides) - SAMPLING_FIELDS)
    if unknown:
        raise UsageError(f"unknown model_args {', '.join(unknown)}: give workdir, tokenizer, gen_length, "
                         "mc_samples, seed, nfe_log, batch_size or a sampling field (steps, block_length, "
                         "corrector_steps, corrector_every, preset, ...)")
    changes = {**LLADA_SAMPLING, "steps": gen_length, **overrides, "batch_size": batch_size}
    return recorded.replace(**changes)


def context_ids(tokenizer: ChatTokenizer, context: str) -> list[int]:
    """The ids of a context: a chat-template rendering keeps its own BOS; plain text gets one in front."""
    ids = tokenizer.encode(context)
    if tokenizer.bos_id is not None and (not ids or ids[0] != tokenizer.bos_id):
        ids = [tokenizer.bos_id, *ids]
    return ids


def pair_ids(tokenizer: ChatTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness's models split them: the context's trailing spaces
    move to the continuation, and the continuation is what the whole text adds to the context's ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    head = context_ids(tokenizer, context)
    whole = context_ids(tokenizer, context + continuation)
    if whole[: len(head)] != head:  # The two texts tokenise apart at the seam: encode them separately.
        return head, tokenizer.encode(continuation)
    return head, whole[len(head):]


def draw_masks(rng: np.random.Generator, length: int, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """(masked bool [draws, length], weight float32 [draws] = length / k): draw j masks k_j positions of
    the `length` continuation positions, k stratified over [1, length] across the draws."""
    u = rng.uniform()
    k = np.minimum(np.floor((u + np.arange(draws)) * length / draws).astype(np.int64) + 1, length)
    ranks = np.argsort(rng.uniform(size=(draws, length)), axis=1).argsort(axis=1)
    return ranks < k[:, None], (length / k).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("apply_fn", "mask_id", "vocab_size"))
def weighted_masked_nll(params: Any, tokens: jax.Array, masked: jax.Array, weight: jax.Array, *,
                        apply_fn: Any, mask_id: int, vocab_size: int) -> jax.Array:
    """sum over masked positions of -weight * log p(token) [B] for tokens int32 [B, L], masked bool [B, L],
    weight float32 [B], the model seeing the masked positions as [MASK] (sigma = 0: not time-conditioned)."""
    z = jnp.where(masked, mask_id, tokens)
    logits = apply_fn(params, z, jnp.zeros(tokens.shape[:1], jnp.float32))
    logp = diffusion.log_probs_without_mask(logits, mask_id, vocab_size=vocab_size)
    return diffusion.mdm_loss(logp, tokens, z, weight, mask_id).sum(axis=-1)


@dataclasses.dataclass(frozen=True)
class Row:
    """One Monte-Carlo draw of one request: its tokens, masked positions and weight."""

    request: int
    tokens: np.ndarray  # int32 [L]
    masked: np.ndarray  # bool [L]
    weight: float


@register_model(NAME)
class ProsecoLM(LM):
    """`lm_eval --model proseco_jax --model_args workdir=W[,tokenizer=DIR,gen_length=256,mc_samples=128,
    seed=0,nfe_log=FILE,<sampling field>=V,...]`; `workdir` and `tokenizer` may also be a LoadedModel and a
    ChatTokenizer (Python callers). NFE per generated answer go to `nfe_records` and, with `nfe_log`, to a
    JSONL file keyed by task and doc_id: the harness's per-sample log holds only what the task computes."""

    def __init__(self, workdir: str | LoadedModel = "", tokenizer: str | ChatTokenizer = "",
                 gen_length: int = 256, mc_samples: int = 128, seed: int = 0, nfe_log: str = "",
                 batch_size: int | str | None = None, max_batch_size: int | None = None,
                 device: str | None = None, **sampling: Any):
        super().__init__()
        del max_batch_size, device  # The batch is `batch_size`; devices are the mesh's.
        if not workdir:
            raise UsageError("model_args must name workdir=DIR, a trained or converted workdir")
        if jax.process_count() > 1:
            raise UsageError(UNSUPPORTED)
        loaded = workdir if isinstance(workdir, LoadedModel) else inference.load_workdir(workdir)
        config = loaded.config
        if getattr(config.model, "time_conditioning", False):
            raise UsageError(UNSUPPORTED)
        if isinstance(tokenizer, ChatTokenizer):
            self.tokenizer = tokenizer
        else:
            where = "" if isinstance(workdir, LoadedModel) else workdir
            self.tokenizer = prompts.chat_tokenizer(config, where, tokenizer)
        if int(gen_length) < 1 or int(mc_samples) < 1:
            raise UsageError(f"gen_length and mc_samples must be positive, got {gen_length}, {mc_samples}")
        shards = sharding.data_parallel_size(loaded.mesh)
        rows = int(batch_size) if str(batch_size or "").isdigit() and int(batch_size) > 0 else 1
        settings = harness_settings(config.sampling, sampling, int(gen_length), -(-rows // shards) * shards)
        self.loaded, self.seed = loaded, int(seed)
        self.gen_length, self.mc_samples = int(gen_length), int(mc_samples)
        self.settings = prompts.with_eos(settings.resolved(config.diffusion.parameterization),
                                         self.tokenizer.eos_id)
        self.max_length = getattr(config.model, "max_length", None) or config.data.length
        if self.max_length <= self.gen_length:
            raise UsageError(f"gen_length={self.gen_length} leaves no room for a prompt in the model's "
                             f"{self.max_length} positions")
        self.nfe_log = nfe_log
        self.nfe_records: list[dict[str, Any]] = []
        self._stops = prompts.stop_ids(self.tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.origin.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.origin if self.tokenizer.has_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
                            ) -> str:
        return self.tokenizer.render(chat_history, add_generation_prompt)

    def generate_until(self, requests: list[Any]) -> list[str]:
        """The completion of each (context, gen_kwargs) request, cut at its `until` strings."""
        ids = [context_ids(self.tokenizer, context)[-(self.max_length - self.gen_length):]
               for context, _ in (r.args for r in requests)]
        texts: list[str] = [""] * len(requests)
        mask_id = self.loaded.config.mask_id
        progress = tqdm(total=len(requests), desc="generate_until", disable=not requests)
        for jobs, out in prompts.sample_prompts(self.loaded, ids, gen_length=self.gen_length,
                                                settings=self.settings, seed=self.seed):
            progress.update(len(jobs))
            for i, job in enumerate(jobs):
                index = job.prompt
                kwargs = requests[index].args[1] or {}
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                generated = prompts.completion(out["tokens"][i], len(ids[index]), set(self._stops), mask_id)
                generated = generated[: int(kwargs.get("max_gen_toks", self.gen_length))]
                texts[index] = truncate_at_stop(self.tokenizer.decode(generated), until)
                self.nfe_records.append({"task": requests[index].task_name, "doc_id": requests[index].doc_id,
                                         "generated_tokens": len(generated),
                                         **{key: int(out[key][i]) for key in NFE_KEYS}})
        progress.close()
        self._write_nfe_log()
        return texts

    def _write_nfe_log(self) -> None:
        if self.nfe_log:
            fileio.atomic_write_text(self.nfe_log, "".join(json.dumps(r) + "\n" for r in self.nfe_records))

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """(the bound's estimate of log p(continuation | context), False) per request."""
        pairs = [pair_ids(self.tokenizer, context, continuation) for context, continuation in
                 (r.args for r in requests)]
        return [(value, False) for value in self._log_likelihoods(pairs)]

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """The bound on log p(text) of each (text,) request after BOS; a text must fit the model whole."""
        bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
        pairs = [(bos, self.tokenizer.encode(r.args[0])) for r in requests]
        return self._log_likelihoods(pairs)

    def _log_likelihoods(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        rows: dict[int, list[Row]] = defaultdict(list)  # by sequence length: one program per length
        for index, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise UsageError(f"loglikelihood request {index} has an empty continuation")
            if len(continuation) > self.max_length - 1:
                raise UsageError(f"loglikelihood request {index}: its {len(continuation)} tokens do not fit "
                                 f"the model's {self.max_length} positions")
            context = context[-(self.max_length - len(continuation)):]
            tokens = np.asarray(context + continuation, np.int32)
            # Keyed by the request's ids, so a request draws the same masks in any batch.
            rng = np.random.default_rng([self.seed, zlib.crc32(tokens.tobytes())])
            masked, weight = draw_masks(rng, len(continuation), self.mc_samples)
            masked = np.concatenate([np.zeros((self.mc_samples, len(context)), bool), masked], axis=1)
            rows[len(tokens)] += [Row(index, tokens, m, float(w)) for m, w in zip(masked, weight)]
        totals = np.zeros(len(pairs))
        size = self.settings.batch_size
        progress = tqdm(total=len(pairs) * self.mc_samples, desc="loglikelihood draws", disable=not pairs)
        for group in rows.values():
            for start in range(0, len(group), size):
                batch = group[start: start + size]
                progress.update(len(batch))
                filler = [dataclasses.replace(batch[-1], weight=0.0)] * (size - len(batch))
                nll = self._batch_nll(batch + filler)
                for row, value in zip(batch, nll):
                    totals[row.request] += value
        progress.close()
        return [float(-total / self.mc_samples) for total in totals]

    def _batch_nll(self, batch: Sequence[Row]) -> np.ndarray:
        loaded, config = self.loaded, self.loaded.config
        tokens, masked, weight = (jax.device_put(a, sharding.batch_sharding(loaded.mesh, a.ndim)) for a in (
            np.stack([r.tokens for r in batch]), np.stack([r.masked for r in batch]),
            np.asarray([r.weight for r in batch], np.float32)))
        with sharding.mesh_context(loaded.mesh, loaded.placed.rules):
            nll = weighted_masked_nll(loaded.params, tokens, masked, weight, apply_fn=loaded.apply_fn,
                                      mask_id=config.mask_id, vocab_size=config.output_vocab_size)
        return inference.to_host(nll)
