"""The lm-evaluation-harness model `proseco_jax` on a tiny LLaDA (random weights made to prefer one word, or a
stub whose answer is pinned by position) with the word-level tokenizer of tests/test_llada_sampling.py, and
lm-eval's command line on a local task (tests/data/harness_task: YAML over JSONL)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, assert_usage_error, binary, python_env
from lm_eval.api.instance import Instance
from test_llada_sampling import EOS, ROWS, llada_config, write_tokenizer, write_workdir

from proseco_jax import inference, sharding
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import harness, harness_sweep

SEVEN, FOUR = 6, 5  # word ids of the test tokenizer
TASKS = os.path.join("tests", "data", "harness_task")
SMALL = dict(gen_length=8, block_length=4, steps=8, corrector_steps=1, mc_samples=8)


def seven_certain(params):
    """The random LLaDA made to put "seven" first at every position (as test_llada_sampling.eos_certain)."""
    params = jax.tree.map(np.array, params)
    params["embedding"][:, 0] += 100.0
    params["output"]["kernel"][0, :] = 0.0
    params["output"]["kernel"][0, SEVEN] = 50.0
    return params


def seven_then_four(switch: int):
    """Stub logits: "seven" first before absolute position `switch`, "four" from it on, EOS never."""
    def apply_fn(params, tokens, sigma):
        del params, sigma
        target = jnp.where(jnp.arange(tokens.shape[1]) < switch, SEVEN, FOUR)
        return jnp.broadcast_to(10.0 * jax.nn.one_hot(target, ROWS), tokens.shape + (ROWS,))
    return apply_fn


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return write_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer):
    path = str(tmp_path_factory.mktemp("harness") / "work")
    write_workdir(path, llada_config(tokenizer), seven_certain)
    return path


def load(workdir: str) -> inference.LoadedModel:
    config = inference.workdir_config(workdir)
    return inference.load_workdir(workdir, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))


@pytest.fixture(scope="module")
def loaded(workdir):
    return load(workdir)


@pytest.fixture(scope="module")
def random_workdir(tmp_path_factory, tokenizer):
    """The tiny LLaDA with its random weights: answers that differ from prompt to prompt."""
    path = str(tmp_path_factory.mktemp("harness") / "random")
    write_workdir(path, llada_config(tokenizer))
    return path


@pytest.fixture(scope="module")
def random_loaded(random_workdir):
    return load(random_workdir)


def request(kind: str, *args, doc_id: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=("t", doc_id, 1))


def test_generate_until_honours_stop_strings_and_max_gen_toks(loaded, workdir):
    stub = dataclasses.replace(loaded, placed=dataclasses.replace(loaded.placed, apply_fn=seven_then_four(8)))
    model = harness.ProsecoLM(stub, **SMALL)
    context = "what is three plus four"  # BOS + 5 words: positions 6, 7 are "seven", 8.. "four"
    texts = model.generate_until([request("generate_until", context, {"until": ["four"]}),
                                  request("generate_until", context, {"until": ["\n"], "max_gen_toks": 3}),
                                  request("generate_until", context, {"until": "nothing"})])
    assert texts == ["seven seven ", "seven seven four", "seven seven four four four four four four"]
    assert [r["generated_tokens"] for r in model.nfe_records] == [8, 3, 8]
    assert all(r["nfe"] == r["predictor_nfe"] + r["corrector_nfe"] > 0 for r in model.nfe_records)
    assert model.settings.eos_id == EOS and model.settings.sampler == "llada_block"


def test_batching_gives_the_answers_of_one_request_at_a_time(random_loaded):
    contexts = ["what is three plus four", "what is the answer", "four plus three is", "what is seven"]
    generate = [request("generate_until", c, {"until": ["\n"]}, doc_id=i) for i, c in enumerate(contexts)]
    choices = [request("loglikelihood", c, " " + w, doc_id=i) for i, c in enumerate(contexts)
               for w in ("seven", "four three")]
    batched = harness.ProsecoLM(random_loaded, batch_size=4, **SMALL)
    single = harness.ProsecoLM(random_loaded, batch_size=1, **SMALL)
    assert batched.settings.batch_size == 4 and single.settings.batch_size == 1
    texts = batched.generate_until(generate)
    assert len(set(texts)) > 1  # answers that a mix-up between requests would change
    assert texts == [single.generate_until([r])[0] for r in generate]
    together = batched.loglikelihood(choices)
    alone = [single.loglikelihood([r])[0] for r in choices]
    assert len({round(v, 3) for v, _ in together}) == len(choices)
    np.testing.assert_allclose([v for v, _ in together], [v for v, _ in alone], rtol=1e-5)


def test_all_local_devices_give_the_answers_of_one(random_workdir, random_loaded):
    everywhere = inference.load_workdir(random_workdir)  # the mesh of every local device
    generate = [request("generate_until", c, {"until": ["\n"]}) for c in ("what is the answer", "what is")]
    choices = [request("loglikelihood", "what is", " " + w) for w in ("seven", "four three")]
    one, eight = harness.ProsecoLM(random_loaded, **SMALL), harness.ProsecoLM(everywhere, **SMALL)
    assert len(jax.devices()) == 8 and eight.settings.batch_size == 8  # one row per data shard at least
    assert eight.generate_until(generate) == one.generate_until(generate)
    np.testing.assert_allclose([v for v, _ in eight.loglikelihood(choices)],
                               [v for v, _ in one.loglikelihood(choices)], rtol=1e-5)


def test_loglikelihood_is_finite_and_prefers_the_continuation_the_model_predicts(loaded):
    model = harness.ProsecoLM(loaded, **SMALL)
    pairs = [("what is three plus four", " seven"), ("what is three plus four", " four"),
             ("what is three plus four", " seven seven"), ("what is three plus four", " four seven")]
    values = [v for v, greedy in model.loglikelihood([request("loglikelihood", *p) for p in pairs])]
    assert np.all(np.isfinite(values)) and max(values) <= 0
    assert values[0] > values[1] and values[2] > values[3]
    assert values[0] > -1e-3  # "seven" is certain: the bound is log 1
    rolling = model.loglikelihood_rolling([request("loglikelihood_rolling", "seven seven four")])
    assert np.isfinite(rolling[0]) and rolling[0] < values[2]


def test_bad_model_args_are_one_line_usage_errors(loaded, workdir, tmp_path):
    with pytest.raises(UsageError, match="unknown model_args stepz"):
        harness.ProsecoLM(loaded, stepz=3)
    with pytest.raises(UsageError, match="workdir"):
        harness.ProsecoLM()
    proc = lm_eval("--model_args", f"workdir={tmp_path}", "--tasks", "harness_tiny_gen",
                   LMEVAL_LOG_LEVEL="ERROR")
    assert_usage_error(proc, "has no config.json")


def lm_eval(*args: str, **env: str) -> subprocess.CompletedProcess:
    """launch/harness.py --model proseco_jax *args --include_path <the local tasks>, offline, run from the
    repository root (the tasks name their JSONL relative to it)."""
    env = python_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", **env)
    return subprocess.run([sys.executable, binary("harness.py"), "--model", "proseco_jax", *args,
                           "--include_path", TASKS], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_lm_eval_command_line_runs_a_local_task(workdir, tmp_path):
    args = ",".join(f"{k}={v}" for k, v in SMALL.items())
    proc = lm_eval("--model_args", f"workdir={workdir},{args},nfe_log={tmp_path / 'nfe.jsonl'}",
                   "--tasks", "harness_tiny_gen,harness_tiny_choice", "--batch_size", "2",
                   "--apply_chat_template", "--output_path", str(tmp_path / "out"), "--log_samples")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(tmp_path / "out") for f in names)
    [results_file] = [f for f in files if os.path.basename(f).startswith("results")]
    [samples_file] = [f for f in files if os.path.basename(f).startswith("samples_harness_tiny_gen")]
    results = json.load(open(results_file))["results"]
    assert results["harness_tiny_gen"]["exact_match,none"] == 1.0  # "seven", cut at the space
    assert results["harness_tiny_choice"]["acc,none"] == 1.0  # "seven" is the likelier choice
    prompt = json.loads(open(samples_file).readline())["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("<|startoftext|><|start_header_id|>user")  # the chat template applied
    nfe = [json.loads(line) for line in open(tmp_path / "nfe.jsonl")]
    assert sorted(r["doc_id"] for r in nfe) == [0, 1, 2] and all(r["task"] == "harness_tiny_gen" for r in nfe)


def test_sweep_rows_resume_and_the_table_holds_each_row(tmp_path):
    calls = []

    def evaluate(steps, every, corrector_steps):
        calls.append((steps, every, corrector_steps))
        nfe = steps * (1 + corrector_steps / every)
        results = {"t": {"alias": "t", "acc,none": steps / 100, "acc_stderr,none": 0.1}}
        return results, [{"task": "t", "nfe": nfe}]

    grid = harness_sweep.parse_grid("4,8", "1:0,2:1")
    assert grid == [(4, 1, 0), (8, 1, 0), (4, 2, 1), (8, 2, 1)]
    path = str(tmp_path / "rows.json")
    harness_sweep.run(evaluate, grid[:3], path, say=lambda _: None)
    rows = harness_sweep.run(evaluate, grid, path, say=lambda _: None)
    assert calls == grid  # the second run scored only the row the first had not
    other = harness_sweep.run(evaluate, grid[:1], path, run_key="other tasks", say=lambda _: None)
    assert calls == [*grid, grid[0]] and len(other) == 1  # Rows of other tasks are not taken for done.
    assert len(json.load(open(path))) == len(grid) + 1
    assert [(r["steps"], r["nfe"], r["score"], r["metric"]) for r in rows][-1] == (8, 12.0, 0.08, "acc,none")
    table = harness_sweep.format_table(rows)
    assert len(table.splitlines()) == 2 + len(grid)
    assert "| t | 8 | 2 | 1 | 12.0 | acc,none | 0.0800 |" in table
    with pytest.raises(UsageError, match="bad grid"):
        harness_sweep.parse_grid("4", "1")


def test_sweep_binary_writes_accuracy_against_nfe(workdir, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, binary("harness_sweep.py"), f"--workdir={workdir}", "--tasks=harness_tiny_gen",
         f"--include_path={TASKS}", "--limit=1", "--steps=8", "--correctors=1:0,1:1", "--gen_length=8",
         "--block_length=4", "--batch_size=1", f"--output_dir={out}"],
        env=python_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"), cwd=REPO, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.load(open(out / "harness_sweep.json"))
    assert [(r["corrector_steps"], r["score"]) for r in rows] == [(0, 1.0), (1, 1.0)]
    assert rows[1]["nfe"] > rows[0]["nfe"] > 0  # the corrector's calls are counted
    assert (out / "harness_sweep.png").stat().st_size > 0 and "| harness_tiny_gen | 8 |" in proc.stdout
