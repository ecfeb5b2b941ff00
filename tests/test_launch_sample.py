"""`launch/sample.py` and the inference library under it: every sampler draws valid samples from a trained
workdir; bad input is one line and exit code 2 (the binary's plumbing once, each case in-process)."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import CONFIG, LENGTH, VOCAB, assert_usage_error, run_binary, tiny_config, usage_error

from proseco_jax import config_base, inference, prompts, sharding
from proseco_jax.errors import UsageError


def run_sample(trained, output, *extra):
    workdir, _, overrides = trained
    return run_binary("sample.py", f"--config={CONFIG}", f"--workdir={workdir}", f"--output={output}",
                      "--config.sampling.batch_size=4", *overrides, *extra, devices=2)


def test_overrides_without_a_config_file_apply_to_the_recorded_config(tiny_trained_workdir, tmp_path):
    workdir = tiny_trained_workdir[0]
    output = tmp_path / "samples.jsonl"
    proc = run_binary("sample.py", f"--workdir={workdir}", f"--output={output}", "--num_samples=2",
                      "--config.sampling.batch_size=2", "--config.sampling.sampler=mdlm",
                      "--config.sampling.steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 2 and all(1 <= row["nfe"] <= 3 for row in rows)  # T = 3 was applied
    proc = usage_error("sample.py", f"--workdir={workdir}", f"--output={tmp_path / 'g.jsonl'}",
                       "--config.sampling.guidance_label=0")
    assert_usage_error(proc, "needs a label-conditioned model")
    assert not (tmp_path / "g.jsonl").exists()


def test_a_file_cut_mid_line_and_mid_batch_resumes_to_the_bytes_of_an_uninterrupted_run(
        tiny_trained_workdir, tmp_path):
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    settings = ("--num_samples=10", "--config.sampling.steps=4", "--config.sampling.corrector_steps=2",
                "--config.sampling.corrector_rule=sample")
    proc = run_sample(tiny_trained_workdir, str(whole), *settings)  # batches of 4 on 2 devices
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = whole.read_bytes().splitlines(keepends=True)
    assert len(lines) == 10 and len(set(lines)) > 1
    # A kill during a write: one batch and a sample into the next whole, half of the sixth line written.
    part.write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    workdir, _, overrides = tiny_trained_workdir
    proc = run_binary("sample.py", f"--config={CONFIG}", f"--workdir={workdir}", f"--output={part}",
                      *overrides, *settings, "--config.sampling.batch_size=3", devices=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sampling 5 of 10 samples" in proc.stdout
    assert part.read_bytes() == whole.read_bytes()


@pytest.fixture(scope="module")
def loaded(tiny_trained_workdir):
    workdir, _, overrides = tiny_trained_workdir
    config = config_base.resolve(tiny_config(*overrides))
    # Two of the eight fake devices: batches of 4 split over the data axis.
    return inference.load_model(config, workdir, mesh=sharding.make_mesh(config.mesh, jax.devices()[:2]))


def test_sample_binary_writes_the_jsonl_contract(tiny_trained_workdir, tmp_path):
    output = tmp_path / "samples.jsonl"
    proc = run_sample(tiny_trained_workdir, str(output), "--num_samples=6", "--history",
                      "--config.sampling.steps=8", "--config.sampling.corrector_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert len(row["tokens"]) == LENGTH and all(0 <= t < VOCAB for t in row["tokens"])
        assert row["text"].split() == [f"t{t}" for t in row["tokens"]]
        assert row["nfe"] == row["predictor_nfe"] + row["corrector_nfe"] and row["predictor_nfe"] >= 1
        assert len(row["history"]) == 8 and row["history"][-1] == row["tokens"]
    assert not os.path.exists(str(output) + ".partial")


def test_sample_binary_reports_bad_input_in_one_line_before_it_creates_the_output(tiny_trained_workdir,
                                                                                  tmp_path):
    output = tmp_path / "s.jsonl"
    assert_usage_error(run_sample(tiny_trained_workdir, str(output), "--prompt_ids=1,99"), "99")
    assert_usage_error(run_sample(tiny_trained_workdir, str(output), "--config.sampling.sampler=llada_block",
                                  "--config.sampling.block_length=5"), "not whole blocks")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = usage_error("sample.py", f"--config={CONFIG}", f"--workdir={empty}", f"--output={output}")
    assert_usage_error(proc, "no checkpoint")
    assert not output.exists()


SAMPLERS = {
    "proseco": dict(sampler="proseco", steps=8, corrector_steps=2),
    "mdlm": dict(sampler="mdlm", steps=8),
    "remdm": dict(sampler="remdm", steps=8),
    "confidence": dict(sampler="confidence", steps=8),
    "llada_block": dict(sampler="llada_block", steps=6, block_length=8),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_draws_valid_samples_with_exact_nfe(loaded, name):
    settings = loaded.config.sampling.replace(batch_size=4, **SAMPLERS[name])
    prompt = np.arange(1, 9, dtype=np.int32) if name == "llada_block" else None
    batches = list(inference.sample_batches(loaded, 6, settings=settings, prompt=prompt))
    assert [b["tokens"].shape for b in batches] == [(4, LENGTH), (2, LENGTH)]
    tokens = np.concatenate([b["tokens"] for b in batches])
    assert tokens.min() >= 0 and tokens.max() < VOCAB
    for b in batches:
        np.testing.assert_array_equal(b["nfe"], b["predictor_nfe"] + b["corrector_nfe"])
        assert np.all(b["nfe"] <= settings.max_nfe) and np.all(b["predictor_nfe"] >= 1)
    if name == "mdlm":
        assert all(np.all(b["corrector_nfe"] == 0) for b in batches)
    if prompt is not None:
        np.testing.assert_array_equal(tokens[:, :8], np.broadcast_to(prompt, (6, 8)))


@pytest.mark.parametrize(
    "change, prompt, message",
    [
        (dict(sampler="confidence", steps=LENGTH + 1), None, "steps"),
        ({}, [1] * (LENGTH + 1), "prompt"),
        ({}, [1, 99], "99"),
    ],
    ids=["confidence_T_too_large", "prompt_too_long", "prompt_id_out_of_vocab"],
)
def test_bad_sampling_input_is_a_one_line_usage_error(loaded, change, prompt, message):
    settings = loaded.config.sampling.replace(batch_size=4, **change)
    prompt = None if prompt is None else np.asarray(prompt, np.int32)
    with pytest.raises(UsageError, match=message) as info:
        next(inference.sample_batches(loaded, 2, settings=settings, prompt=prompt))
    assert "\n" not in str(info.value)


def test_negative_corrector_steps_is_a_config_error():
    config = tiny_config("--config.sampling.corrector_steps=-1")
    with pytest.raises(UsageError, match="sampling.corrector_steps"):
        config_base.resolve(config)


def test_missing_checkpoint_is_a_one_line_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        inference.load_model(config_base.resolve(tiny_config()), str(tmp_path))


def test_samples_of_a_text_corpus_are_decoded_with_its_tokenizer():
    config = config_base.resolve(tiny_config("--config.data.name=text_files", "--config.data.tokenizer=bytes",
                                             "--config.data.vocab_size=259"))
    decode = inference.text_decoder(config)
    assert decode(np.asarray([256, 104, 105, 257, 258])) == "hi"  # BOS, 'h', 'i', EOS, PAD
    markov = inference.text_decoder(config_base.resolve(tiny_config()))
    assert markov(np.asarray([3, 1])) == "t3 t1"
    warnings = []
    offline = config_base.resolve(tiny_config("--config.data.name=text_files", "--config.data.tokenizer=gpt2",
                                              "--config.data.vocab_size=50257",
                                              "--config.data.tokenizer_path=/nonexistent/tokenizer.json"))
    assert inference.text_decoder(offline, warn=warnings.append)(np.asarray([7, 8])) == "7 8"
    assert len(warnings) == 1 and "token ids" in warnings[0]


def test_text_prompts_without_a_tokenizer_are_a_one_line_usage_error(tmp_path):
    config = config_base.resolve(tiny_config())  # the Markov language records no tokenizer directory
    with pytest.raises(UsageError, match="--tokenizer=DIR") as info:
        prompts.chat_tokenizer(config, workdir=str(tmp_path))
    assert "\n" not in str(info.value)
