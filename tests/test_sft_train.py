"""ProSeCo fine-tuning end to end: the chat tokenizer, the sft_jsonl corpus (prompt lengths, EOS padding,
identical rebuilds, one-line errors naming the record), the SFT train step (corrector off == vanilla LLaDA
SFT, micro-batches == the full batch) and launch/train.py on configs/llada_tiny_sft.py (falling loss, resume
after SIGKILL with the same metrics).

Everything runs offline: the tests write a byte-level tokenizer with LLaDA's vocabulary layout ([MASK]
inside the table, the chat's special tokens above it) and a LLaDA-like chat template.
"""

from __future__ import annotations

import json
import math
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, assert_resumes_after_sigkill, assert_usage_error, run_binary

from proseco_jax import config_base, sharding, train
from proseco_jax.data import pipeline, sft_builder
from proseco_jax.data.chat import ChatTokenizer
from proseco_jax.data.errors import DataError
from proseco_jax.diffusion import Objective
from proseco_jax.errors import UsageError

CONFIG = os.path.join(REPO, "configs", "llada_tiny_sft.py")
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]
EOS, BOS, MASK = 256, 257, 258
TEMPLATE = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


def write_tokenizer(directory: str, template: str | None = TEMPLATE) -> str:
    """A byte-level tokenizer (ids 0..255), then EOS 256, BOS 257, [MASK] 258 and the turn markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    os.makedirs(directory, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(os.path.join(directory, "tokenizer.json"))
    config = {"bos_token": "<|startoftext|>", "eos_token": {"content": "<|endoftext|>"}}
    if template is not None:
        config["chat_template"] = template
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return directory


def records(n: int, seed: int = 0) -> list[dict]:
    """Alternating prompt/response and messages records of a small learnable task (reverse, upper-case)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        word = "".join(rng.choice("abcde") for _ in range(rng.randint(2, 6)))
        if i % 2:
            out.append({"messages": [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": f"up {word}"},
                                     {"role": "assistant", "content": word.upper()}]})
        else:
            out.append({"prompt": f"rev {word}", "response": word[::-1]})
    return out


def write_jsonl(path: str, rows: list, blank_after: int | None = None) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
            if i == blank_after:
                f.write("\n")
    return path


def load_config(**overrides):
    config = config_base.from_file(CONFIG)
    for dotted, value in overrides.items():
        section, name = dotted.split("__")
        config[section][name] = value
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tokenizer = write_tokenizer(str(root / "tokenizer"))
    rows = records(80)  # 8 held out: one validation batch
    write_jsonl(str(root / "a.jsonl"), rows[:40], blank_after=3)
    write_jsonl(str(root / "b.jsonl"), rows[40:])
    return {"root": root, "tokenizer": tokenizer, "files": str(root / "*.jsonl"), "rows": rows}


def _data_config(corpus, data_dir, **more):
    config = load_config(data__files=corpus["files"], data__tokenizer_path=corpus["tokenizer"],
                         data__data_dir=str(data_dir), **more)
    return config_base.resolve(config).data


def _expected(tokenizer: ChatTokenizer, row: dict) -> tuple[list[int], int]:
    if "messages" in row:
        return tokenizer.example_ids(row["messages"][:-1], row["messages"][-1]["content"])
    return tokenizer.example_ids([{"role": "user", "content": row["prompt"]}], row["response"])


# ------------------------------------------------------------------------------------------ tokenizer


def test_example_ids_are_the_prompt_then_the_answer_turn_ending_in_eos(corpus):
    tok = ChatTokenizer.load(corpus["tokenizer"])
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (BOS, EOS, len(SPECIALS) + 256)
    before = [{"role": "user", "content": "hi there"}]
    ids, n = tok.example_ids(before, "ok!")
    assert ids[:n] == tok.prompt_ids(before)
    assert tok.decode(ids[:n], skip_special_tokens=False) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.decode(ids[n:], skip_special_tokens=False) == "ok!<|eot_id|><|endoftext|>"
    assert tok.decode(ids[n:]) == "ok!"
    assert tok.encode("abc") == [ord("a") - 33, ord("b") - 33, ord("c") - 33]  # byte-level alphabet order


def test_a_directory_without_a_template_concatenates_the_contents(tmp_path):
    tok = ChatTokenizer.load(write_tokenizer(str(tmp_path / "plain"), template=None))
    ids, n = tok.example_ids([{"role": "user", "content": "ab"}], "cd")
    assert ids[:n] == [BOS, *tok.encode("ab")] and ids[n:] == [*tok.encode("cd"), EOS]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "neither a directory nor a hub repo id"),
    (lambda d: os.makedirs(d), "holds no tokenizer.json"),
    (lambda d: (os.makedirs(d), open(os.path.join(d, "tokenizer.json"), "w").write("{not json")),
     "is not a tokenizer file"),
])
def test_bad_tokenizer_directories_are_one_line_errors(tmp_path, setup, message):
    where = str(tmp_path / "nope" / "x" / "y")
    setup(where)
    with pytest.raises(DataError, match=message) as info:
        ChatTokenizer.load(where)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- builder


def test_builder_writes_prompt_lengths_and_eos_padding_and_rebuilds_identically(corpus, tmp_path):
    cfg = _data_config(corpus, tmp_path / "d1")
    prepared = sft_builder.prepare_sft(cfg)
    tok = ChatTokenizer.load(corpus["tokenizer"])
    train_src, val_src = prepared.sources["train"], prepared.sources["validation"]
    n_val = math.ceil(cfg.validation_fraction * len(corpus["rows"]))
    assert (len(train_src), len(val_src)) == (len(corpus["rows"]) - n_val, n_val)
    examples = [train_src[i] for i in range(len(train_src))] + [val_src[i] for i in range(len(val_src))]
    for row, example in zip(corpus["rows"], examples):
        ids, n = _expected(tok, row)
        tokens = np.asarray(example["tokens"])
        assert tokens.dtype == np.int32 and tokens.shape == (cfg.length,)
        assert int(example["prompt_length"]) == n
        assert tokens[:len(ids)].tolist() == ids
        assert (tokens[len(ids):] == EOS).all() and tokens[len(ids) - 1] == EOS
        assert tok.decode(tokens[:n], skip_special_tokens=False).endswith("assistant<|end_header_id|>\n\n")
    # The pipeline turns prompt lengths into the response mask the train step reads.
    batch = next(pipeline.eval_batches(train_src, global_batch_size=4, num_batches=1, process_index=0,
                                       process_count=1))
    lengths = batch["prompt_length"]
    assert batch["mask"].dtype == np.uint8
    for row, n in zip(batch["mask"], lengths):
        assert row[:n].sum() == 0 and row[n:].all()
    # The chat tokenizer comes along with the data (for decoding samples).
    assert prepared.tokenizer.decode(np.asarray(train_src[0]["tokens"])[int(train_src[0]["prompt_length"]):]
                                     ) == corpus["rows"][0]["response"]
    # A second preparation elsewhere is byte-for-byte the same data.
    again = sft_builder.prepare_sft(_data_config(corpus, tmp_path / "d2"))
    for split, source in prepared.sources.items():
        for i in range(len(source)):
            np.testing.assert_array_equal(source[i]["tokens"], again.sources[split][i]["tokens"])
            assert int(source[i]["prompt_length"]) == int(again.sources[split][i]["prompt_length"])


def test_a_prepared_corpus_is_refused_when_its_files_or_tokenizer_changed(tmp_path):
    tok_dir = write_tokenizer(str(tmp_path / "tok"))
    path = write_jsonl(str(tmp_path / "pairs.jsonl"), records(6))
    cfg = config_base.resolve(load_config(data__files=path, data__tokenizer_path=tok_dir,
                                          data__data_dir=str(tmp_path / "d"))).data
    sft_builder.prepare_sft(cfg)
    write_jsonl(path, records(7))
    with pytest.raises(DataError, match="files matching data.files=.* changed since"):
        sft_builder.prepare_sft(cfg)
    write_jsonl(path, records(6))
    sft_builder.prepare_sft(cfg)
    write_tokenizer(tok_dir, template=TEMPLATE.replace("\n\n", "\n"))
    with pytest.raises(DataError, match="tokenizer in .* changed since"):
        sft_builder.prepare_sft(cfg)


def test_a_response_longer_than_the_sequence_is_cut_at_l(corpus, tmp_path, capsys):
    rows = [{"prompt": "p", "response": "z" * 100}, *records(5)]
    path = write_jsonl(str(tmp_path / "long.jsonl"), rows)
    cfg = config_base.resolve(load_config(data__files=path, data__tokenizer_path=corpus["tokenizer"],
                                          data__data_dir=str(tmp_path / "d"))).data
    example = sft_builder.prepare_sft(cfg).sources["train"][0]
    tok = ChatTokenizer.load(corpus["tokenizer"])
    ids, n = _expected(tok, rows[0])
    assert len(ids) > cfg.length and int(example["prompt_length"]) == n
    assert np.asarray(example["tokens"]).tolist() == ids[:cfg.length]
    assert "1 of 5 responses were cut at data.length=64" in capsys.readouterr().out


BAD = {
    "no_response": ({"prompt": "x"}, "no string field 'response'"),
    "last_not_assistant": ({"messages": [{"role": "user", "content": "x"}]}, "not an assistant message"),
    "not_json": ("{oops", "not JSON"),
    "long_prompt": ({"prompt": "x" * 80, "response": "y"}, "no room for the response in data.length=64"),
    "mask_in_text": ({"prompt": "a <|mdm_mask|> b", "response": "y"}, "[MASK] token"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records_are_one_line_errors_naming_file_and_line_and_leave_no_data(corpus, tmp_path, case):
    bad, message = BAD[case]
    rows = records(6)
    rows.insert(3, bad)
    path = write_jsonl(str(tmp_path / "bad.jsonl"), rows, blank_after=0)
    cfg = config_base.resolve(load_config(data__files=path, data__tokenizer_path=corpus["tokenizer"],
                                          data__data_dir=str(tmp_path / "d"))).data
    with pytest.raises(DataError) as info:
        sft_builder.prepare_sft(cfg)
    text = str(info.value)
    assert "\n" not in text and message in text and f"{path}:5" in text  # line 5: a blank line precedes it
    version_dir = os.path.join(str(tmp_path / "d"), "sft_jsonl", sft_builder.sft_config(cfg).name)
    assert not os.path.exists(os.path.join(version_dir, "1.0.0", "dataset_info.json"))
    # Fixing the file and rerunning builds cleanly.
    write_jsonl(path, records(6))
    assert len(sft_builder.prepare_sft(cfg).sources["train"]) == 5


def test_no_matching_files_and_objective_mismatches_are_usage_errors(corpus, tmp_path):
    cfg = config_base.resolve(load_config(data__files=str(tmp_path / "none*.jsonl"),
                                          data__tokenizer_path=corpus["tokenizer"],
                                          data__data_dir=str(tmp_path / "d"))).data
    with pytest.raises(DataError, match="no files match"):
        sft_builder.prepare_sft(cfg)
    with pytest.raises(UsageError, match="set train.objective=sft"):
        train.check_objective(config_base.resolve(load_config(train__objective="diffusion")))
    with pytest.raises(UsageError, match="needs prompt/response pairs"):
        train.check_objective(config_base.resolve(load_config(data__name="markov")))


# ----------------------------------------------------------------------------------------- train step


@pytest.fixture(scope="module")
def step_setup():
    config = config_base.resolve(load_config(corrector__enabled=False, train__warmup_steps=0))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    compiled = train.build(config, mesh)
    state = jax.device_get(compiled.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    b, length = config.train.batch_size, config.data.length
    tokens = rng.integers(0, 256, (b, length)).astype(np.int32)
    tokens[:, -8:] = EOS
    tokens[:, -9] = 261  # an end-of-turn id above [MASK] is a target like any other
    prompt_length = rng.integers(5, 30, b)
    mask = pipeline.response_mask(prompt_length, length)
    return config, mesh, compiled, state, tokens, mask


def test_corrector_off_step_loss_is_the_vanilla_llada_sft_loss(step_setup):
    config, mesh, compiled, state, tokens, mask = step_setup
    key = jax.random.key(7)
    placed = jax.device_put(state, compiled.state_shardings)
    _, metrics = compiled.step(placed, train.device_batch({"tokens": tokens, "mask": mask}, mesh), key)
    # Vanilla SFT by hand: the step draws (p, z) for the global batch from the first half of its key.
    noise_key, _ = jax.random.split(key)
    response = mask.astype(bool)
    u_t, u_mask = (np.asarray(jax.random.uniform(k, s)) for k, s in
                   zip(jax.random.split(noise_key), ((tokens.shape[0],), tokens.shape)))
    eps = config.diffusion.train_eps
    p = (1 - eps) * u_t + eps
    masked = response & (u_mask < p[:, None])
    z = np.where(masked, MASK, tokens)
    logits = np.asarray(compiled.placed.apply_fn(state.params, jnp.asarray(z), jnp.zeros(len(z))), np.float64)
    logits[..., MASK] = -np.inf
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    per_sample = np.where(masked, nll / p[:, None], 0.0).sum(1) / response.sum(1)
    assert float(metrics["loss"]) == pytest.approx(per_sample.mean(), rel=2e-5)
    assert float(metrics["mdm_loss"]) == pytest.approx(per_sample.mean(), rel=2e-5)
    assert float(metrics["corrector_loss"]) == 0.0
    # The prompt is never masked.
    assert not (masked & ~response).any() and masked.any()


def test_sft_micro_batches_give_the_full_batch_loss_and_gradient(step_setup):
    config, mesh, compiled, state, tokens, mask = step_setup
    on = config.replace(corrector=config.corrector.replace(enabled=True))
    loss = train.loss_of(on)
    objective = Objective(on.diffusion, on.corrector, on.mask_id, on.output_vocab_size)
    assert isinstance(loss, train.FineTuning) and objective.vocab_size == on.output_vocab_size == 264
    out = {}
    for m in (1, 2):
        fn = jax.jit(lambda p, x, k, msk, m=m: train.loss_and_grads(
            p, x, k, jnp.asarray(0), apply_fn=compiled.placed.apply_fn, objective=objective,
            micro_batches=m, token_mask=msk, loss=loss))
        out[m] = fn(state.params, jnp.asarray(tokens), jax.random.key(3), jnp.asarray(mask))
    (l1, m1), g1 = out[1]
    (l2, m2), g2 = out[2]
    assert float(m1["corrector_loss"]) > 0
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------- launch/train.py


def _flags(corpus, workdir, data_dir, **overrides):
    values = {"data.files": corpus["files"], "data.tokenizer_path": corpus["tokenizer"],
              "data.data_dir": data_dir, "train.num_steps": 20, "train.log_every": 5, "train.eval_every": 10,
              "train.checkpoint_every": 5}
    values.update(overrides)
    return [f"--config={CONFIG}", f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in values.items())]


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def sft_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_run")
    data_dir = str(root / "data")
    workdir = str(root / "work")
    proc = run_binary("train.py", *_flags(corpus, workdir, data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, data_dir


@pytest.mark.slow
def test_sft_training_through_the_binary_lowers_its_loss(sft_run):
    rows = _metrics(sft_run[0])
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"] and rows[-1]["mdm_loss"] < rows[0]["mdm_loss"]
    assert rows[-1]["corrector_loss"] > 0
    vals = [r["val_sft_loss"] for r in rows if "val_sft_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0]


@pytest.mark.slow
def test_sft_run_killed_with_sigkill_resumes_to_the_same_metrics(corpus, sft_run, tmp_path):
    workdir = str(tmp_path / "killed")
    assert_resumes_after_sigkill(_flags(corpus, workdir, sft_run[1]), workdir, sft_run[0], kill_after=10)


@pytest.mark.slow
def test_a_bad_record_through_the_binary_is_one_line_and_exit_code_2(corpus, tmp_path):
    path = write_jsonl(str(tmp_path / "bad.jsonl"), [*records(3), {"prompt": "p"}])
    flags = _flags(corpus, str(tmp_path / "w"), str(tmp_path / "d"), **{"data.files": path})
    proc = run_binary("train.py", *flags)
    assert_usage_error(proc, f"{path}:4: no string field 'response'")


def test_the_sft_step_compiles_ahead_of_time_with_its_response_mask():
    from proseco_jax import aot

    config = load_config(train__batch_size=2, mesh__data=1)
    report = aot.compile_for(config, aot.target("cpu:1"))
    assert report.error is None and report.temp_bytes > 0 and report.batch_size == 2
    lowered, _ = aot.lower_train_step(config_base.resolve(config), sharding.make_mesh(
        config_base.resolve(config).mesh, jax.devices()[:1]))
    _, batch, _ = lowered.args_info[0]  # state, batch, key
    assert batch["mask"].shape == batch["tokens"].shape == (2, config.data.length)  # the response mask
