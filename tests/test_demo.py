"""The evaluation and demo layer: `launch/evaluate.py` on a tiny trained run (metrics JSON, bad input is
one line and exit code 2), `launch/demo.py --quick` (results.json and the PNG), the notebook, and the
pure pieces of `evaluation/sweep.py` (the headline, the corrections read from a history)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from proseco_jax.evaluation import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "synthetic.py")
VOCAB, LENGTH = 16, 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTRACT_ROW_KEYS = {"sampler", "steps", "corrector_steps", "corrector_every", "nfe", "transition_error",
                     "validity", "chain_nll", "entropy"}

SHARED = [
    "--config.model.num_layers=1",
    "--config.model.hidden_size=64",
    "--config.model.num_heads=4",
    "--config.model.cond_dim=32",
    f"--config.model.max_length={LENGTH}",
    f"--config.data.vocab_size={VOCAB}",
    f"--config.data.length={LENGTH}",
    "--config.data.num_train=1000",
    "--config.data.num_eval=128",
]


def env(devices: int = 1):
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    return e


def launch(script, *args, timeout=600):
    cmd = [sys.executable, os.path.join(REPO, "launch", script), *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def assert_one_line_exit_2(proc, message):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained for 4 steps and 6 ProSeCo samples of it: (workdir, data_dir, samples)."""
    root = tmp_path_factory.mktemp("evaluate_e2e")
    workdir, data_dir, samples = str(root / "work"), str(root / "data"), str(root / "samples.jsonl")
    data = f"--config.data.data_dir={data_dir}"
    proc = launch("train.py", f"--config={CONFIG}", f"--workdir={workdir}", data, *SHARED,
                  "--config.train.num_steps=4", "--config.train.batch_size=8", "--config.train.eval_every=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = launch("sample.py", f"--config={CONFIG}", f"--workdir={workdir}", data, *SHARED,
                  f"--output={samples}", "--num_samples=6", "--config.sampling.batch_size=6",
                  "--config.sampling.steps=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, data_dir, samples


def evaluate(run, *args, samples=None):
    workdir, data_dir, default_samples = run
    return launch("evaluate.py", f"--config={CONFIG}", f"--workdir={workdir}",
                  f"--config.data.data_dir={data_dir}", *SHARED, f"--samples={samples or default_samples}",
                  *args)


def test_evaluate_writes_markov_metrics_and_the_data_reference(run, tmp_path):
    output = tmp_path / "metrics.json"
    proc = evaluate(run, f"--output={output}", "--num_data=64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(output.read_text())
    records = [json.loads(line) for line in open(run[2])]
    assert metrics["num_samples"] == len(records) == 6
    assert metrics["nfe"] == pytest.approx(np.mean([r["nfe"] for r in records]))
    assert metrics["corrector_nfe"] == pytest.approx(np.mean([r["corrector_nfe"] for r in records]))
    assert 0.0 <= metrics["transition_error"] <= 1.0 and 0.0 <= metrics["validity"] <= 1.0
    assert metrics["chain_ppl"] == pytest.approx(math.exp(metrics["chain_nll"]))
    data = metrics["data"]
    assert data["num_samples"] == 64
    assert data["transition_error"] == 0.0 and data["validity"] == 1.0
    assert 0.0 < data["entropy"] <= math.log(VOCAB)
    assert data["chain_nll"] == pytest.approx(data["chain_entropy_nats_per_token"], rel=0.1)


def test_evaluate_scores_against_an_explicit_chain(run, tmp_path):
    _, data_dir, _ = run
    output = tmp_path / "metrics.json"
    proc = evaluate(run, f"--output={output}", f"--chain={os.path.join(data_dir, 'chain.npz')}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(json.loads(output.read_text())) >= {"transition_error", "validity", "chain_nll", "entropy"}


def _write_samples(path, token_rows):
    with open(path, "w") as f:
        for tokens in token_rows:
            f.write(json.dumps({"tokens": tokens, "nfe": 1, "predictor_nfe": 1, "corrector_nfe": 0}) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "case, message",
    [
        ("ragged", "has 31 tokens"),
        ("too_long", f"expected data.length={LENGTH}"),
        ("id_outside_vocab", "outside the vocabulary"),
        ("not_json", "not JSON"),
        ("missing_samples", "samples file not found"),
        ("missing_chain", "chain file not found"),
    ],
)
def test_bad_evaluate_input_is_one_line_and_exit_code_2(run, tmp_path, case, message):
    good = [[0] * LENGTH, [1] * LENGTH]
    samples, extra = None, []
    if case == "ragged":
        samples = _write_samples(tmp_path / "s.jsonl", [good[0], [0] * (LENGTH - 1)])
    elif case == "too_long":
        samples = _write_samples(tmp_path / "s.jsonl", [[0] * (LENGTH + 1)] * 2)
    elif case == "id_outside_vocab":
        samples = _write_samples(tmp_path / "s.jsonl", [good[0], [0] * (LENGTH - 1) + [VOCAB]])
    elif case == "not_json":
        samples = str(tmp_path / "s.jsonl")
        with open(samples, "w") as f:
            f.write('{"tokens": [1, 2\n')
    elif case == "missing_samples":
        samples = str(tmp_path / "absent.jsonl")
    elif case == "missing_chain":
        samples = _write_samples(tmp_path / "s.jsonl", good)
        extra = [f"--chain={tmp_path / 'absent' / 'chain.npz'}"]
    proc = evaluate(run, f"--output={tmp_path / 'm.json'}", *extra, samples=samples)
    assert_one_line_exit_2(proc, message)
    assert not (tmp_path / "m.json").exists()


def _tiny_gpt2(directory):
    """A randomly initialised 1-layer GPT-2 in Hugging Face layout (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    vocab, dim, positions = 64, 16, 32
    rng = np.random.default_rng(0)
    arrays = {"wte.weight": 0.1 * rng.normal(size=(vocab, dim)),
              "wpe.weight": 0.1 * rng.normal(size=(positions, dim)),
              "ln_f.weight": np.ones(dim), "ln_f.bias": np.zeros(dim)}
    shapes = {"ln_1.weight": (dim,), "ln_1.bias": (dim,), "ln_2.weight": (dim,), "ln_2.bias": (dim,),
              "attn.c_attn.weight": (dim, 3 * dim), "attn.c_attn.bias": (3 * dim,),
              "attn.c_proj.weight": (dim, dim), "attn.c_proj.bias": (dim,),
              "mlp.c_fc.weight": (dim, 4 * dim), "mlp.c_fc.bias": (4 * dim,),
              "mlp.c_proj.weight": (4 * dim, dim), "mlp.c_proj.bias": (dim,)}
    for name, shape in shapes.items():
        arrays[f"h.0.{name}"] = 0.02 * rng.normal(size=shape)
    os.makedirs(directory)
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    save_file(arrays, os.path.join(directory, "model.safetensors"))
    config = {"model_type": "gpt2", "vocab_size": vocab, "n_positions": positions, "n_embd": dim,
              "n_layer": 1, "n_head": 2, "eos_token_id": vocab - 1}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def test_evaluate_text_gives_gen_ppl_and_needs_an_evaluator(tmp_path):
    pytest.importorskip("safetensors")
    evaluator = str(tmp_path / "gpt2")
    _tiny_gpt2(evaluator)
    samples = _write_samples(tmp_path / "s.jsonl", [[3, 5, 7, 9, 11, 2], [1, 2, 3, 4, 5, 6]])
    args = [f"--config={CONFIG}", "--config.data.name=owt", f"--samples={samples}"]
    output = tmp_path / "text.json"
    proc = launch("evaluate.py", *args, f"--output={output}", f"--evaluator_dir={evaluator}",
                  f"--reference={samples}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(output.read_text())
    assert 1.0 < metrics["gen_ppl"] < 1000.0 and metrics["scored_tokens"] == 10
    assert metrics["data"]["gen_ppl"] == pytest.approx(metrics["gen_ppl"])
    missing = launch("evaluate.py", *args, f"--output={output}", f"--evaluator_dir={tmp_path / 'absent'}")
    assert_one_line_exit_2(missing, "not found")
    assert_one_line_exit_2(launch("evaluate.py", *args, f"--output={output}"), "--evaluator_dir")


def test_quick_demo_with_compare_training_writes_results_and_plot(tmp_path):
    workdir = tmp_path / "demo"
    proc = launch("demo.py", f"--workdir={workdir}", "--quick", "--compare_training",
                  f"--config.data.data_dir={tmp_path / 'data'}", *SHARED, "--config.train.batch_size=8",
                  "--config.train.num_steps=20", "--config.train.eval_every=20", "--num_samples=8",
                  "--show=2", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    samplers = {row["sampler"] for row in results["rows"]}
    assert samplers == {"mdlm", "proseco", "mdlm (MDLM-trained)"}
    assert (workdir / "mdlm" / "checkpoints").is_dir()
    assert results["headline"]["vs_mdlm_trained"]["baseline"] == "mdlm (MDLM-trained)"
    for row in results["rows"]:
        assert CONTRACT_ROW_KEYS <= set(row), row
        assert row["num_samples"] == 8
        assert row["nfe"] == pytest.approx(row["predictor_nfe"] + row["corrector_nfe"])
        if row["sampler"] == "mdlm":
            assert row["corrector_nfe"] == 0 and row["rewritten"] == 0
    assert results["data"]["transition_error"] == 0.0
    headline_keys = {"baseline_best", "nfe_ratio", "max_error_ratio", "max_entropy_relative"}
    assert headline_keys <= set(results["headline"])
    assert (workdir / "quality_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    assert "bits/token" in proc.stdout and "tokens rewritten" in proc.stdout


def test_notebook_executes_with_tiny_settings(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(os.path.join(REPO, "launch", "demo.ipynb"), as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    overrides = {"data.data_dir": str(tmp_path / "data"), "train.batch_size": 8, "train.num_steps": 6,
                 **{flag.split("=")[0].removeprefix("--config."): int(flag.split("=")[1])
                    if flag.split("=")[1].isdigit() else flag.split("=")[1] for flag in SHARED}}
    cells[0].source += f"\nQUICK = True\nWORKDIR = {str(tmp_path / 'nb')!r}\nOVERRIDES = {overrides!r}\n"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": REPO}})
    client.execute()
    assert (tmp_path / "nb" / "quality_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "transition error" in outputs


def _row(sampler, steps, nfe, error, entropy=1.8, corrector_steps=0, every=1, preset=""):
    return {"sampler": sampler, "steps": steps, "corrector_steps": corrector_steps, "corrector_every": every,
            "preset": preset, "nfe": nfe, "transition_error": error, "entropy": entropy}


ROWS = [
    _row("mdlm", 8, 8.0, 0.10),
    _row("mdlm", 16, 15.0, 0.08),
    _row("mdlm", 64, 40.0, 0.05),
    _row("proseco", 4, 6.0, 0.09, 1.6, 2, 1),
    _row("proseco", 8, 12.0, 0.06, 1.7, 2, 1),
    _row("proseco", 16, 24.0, 0.045, 1.75, 2, 1),
    _row("proseco", 8, 10.0, 0.07, 1.7, 1, 2),  # cheaper than the 12-NFE row, but not as good
    _row("proseco", 64, 200.0, 0.03, 1.7, 4, 1, preset="max"),
]
DATA = {"transition_error": 0.0, "entropy": 1.86}


def test_headline_finds_the_cheapest_proseco_row_reaching_mdlm_best():
    head = sweep.headline(ROWS, DATA)
    assert head["baseline_best"]["nfe"] == 40.0 and head["baseline_best"]["transition_error"] == 0.05
    assert head["method_match"]["nfe"] == 24.0
    assert head["nfe_ratio"] == pytest.approx(40.0 / 24.0)
    assert not head["nfe_ratio_met"]
    # Lower envelope 6 -> 10 -> 12 -> 24: the 0.05 target lies between 12 (0.06) and 24 (0.045) NFE.
    assert head["method_match_nfe_interpolated"] == pytest.approx(12.0 + (0.01 / 0.015) * 12.0)
    assert head["nfe_ratio_interpolated"] == pytest.approx(40.0 / 20.0)


def test_headline_reads_the_max_preset_against_mdlm_best_and_the_data_entropy():
    head = sweep.headline(ROWS, DATA)
    assert head["max_error_ratio"] == pytest.approx(0.03 / 0.05)
    assert head["max_error_ratio_met"]  # 0.6 <= 1 / 1.2
    assert head["max_entropy_relative"] == pytest.approx(1.7 / 1.86 - 1.0)
    assert head["max_entropy_met"]  # -8.6% is within 10%
    lines = sweep.headline_lines(head)
    assert len(lines) == 4 and "not met" in lines[1]


def test_headline_reports_a_bar_not_met_when_no_proseco_row_reaches_mdlm():
    rows = [_row("mdlm", 64, 40.0, 0.01), _row("proseco", 8, 12.0, 0.02, corrector_steps=2)]
    head = sweep.headline(rows, DATA)
    assert head["method_match"] is None and head["nfe_ratio"] is None and not head["nfe_ratio_met"]
    assert head["max_preset"] is None
    assert "no row reaches" in sweep.headline_lines(head)[1]
    other = sweep.headline(rows + [_row("mdlm (MDLM-trained)", 64, 40.0, 0.03)], DATA,
                           baseline="mdlm (MDLM-trained)")
    assert other["baseline_best"]["transition_error"] == 0.03 and other["method_match"]["nfe"] == 12.0


def test_corrections_mark_decoded_tokens_that_a_later_step_rewrote():
    m = 9  # [MASK]
    history = np.array([
        [m, 3, m, m],
        [5, 3, m, m],
        [5, 4, 2, m],  # position 1: 3 -> 4
        [5, 4, 2, 1],
        [6, 4, 2, 1],  # position 0: 5 -> 6
    ])
    first, changed = sweep.corrections(history, m)
    np.testing.assert_array_equal(first, [5, 3, 2, 1])
    np.testing.assert_array_equal(changed, [True, True, False, False])
    assert sweep.marked_text(history, m) == "[t5→t6] [t3→t4] t2 t1"
    transition = np.zeros((m, m))
    transition[6, 4] = transition[4, 2] = transition[2, 1] = 1.0
    assert sweep.forbidden_count(history[-1], transition) == 0
    assert sweep.forbidden_count(first, transition) == 2  # 5 -> 3 and 3 -> 2


def test_default_grid_never_exceeds_the_sequence_length_and_has_every_family():
    grid = sweep.default_grid(64)
    families = {s.family for s in grid}
    assert {"MDLM", "ReMDM", "ProSeCo S=1 ω=1", "ProSeCo S=2 ω=2", "ProSeCo max"} <= families
    assert [s.steps for s in grid if s.sampler == "mdlm"] == [4, 8, 16, 32, 64]
    assert all(s.steps <= 32 for s in grid if s.sampler == "proseco" and not s.preset)
    assert [s.steps for s in sweep.default_grid(16) if s.sampler == "mdlm"] == [4, 8, 16]
    assert len(sweep.default_grid(64, quick=True)) < len(grid)
    top_k = sweep.Setting("ProSeCo top-k", "proseco", 16, 2, 1, extra=(("corrector_rule", "top_k"),))
    assert top_k.sampling_fields()["corrector_rule"] == "top_k" and top_k.max_nfe == 48
    assert sweep.preset_setting("max").max_nfe == 64 + 4 * 64


def test_results_json_has_no_infinities(tmp_path):
    path = str(tmp_path / "r.json")
    sweep.write_json(path, {"rows": [{"chain_nll": math.inf, "nfe": np.float32(2.5), "steps": np.int64(4)}]})
    assert json.loads(open(path).read()) == {"rows": [{"chain_nll": None, "nfe": 2.5, "steps": 4}]}
