"""launch/owt_colab.ipynb end to end on a CPU: its parameter cell pointed at two tiny random DiTs written in
the authors' Hugging Face layout (GPT-2 vocabulary and [MASK]), a tiny random GPT-2 evaluator and a GPT-2
shaped tokenizer, all written here; the notebook must convert both, sample MDLM and ProSeCo at each T,
score them and plot them next to the paper's figures."""

import json
import math
import os

import pytest
from conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GPT2_VOCAB = 50257
LENGTH = 16


def _tiny_dit(directory, seed, monkeypatch) -> str:
    """A 1-block random DiT over GPT-2's 50257 tokens + [MASK], in the layout the authors publish."""
    import test_interop

    for name, value in {"VOCAB": GPT2_VOCAB + 1, "LENGTH": LENGTH, "BLOCKS": 1}.items():
        monkeypatch.setattr(test_interop, name, value)
    model = test_interop.random_model(seed=seed)
    return test_interop.write_hf_dir(directory, model.state_dict(), test_interop.hf_config())


def _tiny_gpt2(directory, tokenizer_json) -> str:
    """A random 1-layer GPT-2 over 50257 ids in Hugging Face format, with a GPT-2 shaped tokenizer.json."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=GPT2_VOCAB, n_positions=64, n_embd=32, n_layer=1, n_head=4,
                                     bos_token_id=GPT2_VOCAB - 1, eos_token_id=GPT2_VOCAB - 1)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    with open(tokenizer_json, encoding="utf-8") as src, open(os.path.join(directory, "tokenizer.json"), "w",
                                                                encoding="utf-8") as dst:
        dst.write(src.read())
    return str(directory)


@pytest.mark.slow
def test_owt_colab_notebook_converts_samples_scores_and_plots_both_models(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("safetensors")
    from test_text_data import _gpt2_shaped_tokenizer_json

    tokenizer = _gpt2_shaped_tokenizer_json(tmp_path / "gpt2_tokenizer.json")
    proseco = _tiny_dit(tmp_path / "proseco_hf", 0, monkeypatch)
    mdlm = _tiny_dit(tmp_path / "mdlm_hf", 1, monkeypatch)
    evaluator = _tiny_gpt2(tmp_path / "gpt2_tiny", tokenizer)
    out = tmp_path / "out"

    notebook = nbformat.read(os.path.join(REPO, "launch", "owt_colab.ipynb"), as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    cells[0].source += (f"\nPROSECO = {proseco!r}\nMDLM = {mdlm!r}\nSTEPS = [4]\nNUM_SAMPLES = 2\n"
                        f"BATCH_SIZE = 2\nEVALUATOR = {evaluator!r}\nGPT2_TOKENIZER = {tokenizer!r}\n"
                        f"OUTPUT_DIR = {str(out)!r}\n")
    monkeypatch.setenv("XLA_FLAGS",
                       "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    results = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    assert set(rows) == {"mdlm", "proseco"} and len(results["rows"]) == 2
    for name, row in rows.items():
        assert row["steps"] == 4 and row["num_samples"] == 2
        assert math.isfinite(row["gen_ppl"]) and row["gen_ppl"] > 1.0 and row["entropy"] > 0.0
        assert row["nfe"] == pytest.approx(row["predictor_nfe"] + row["corrector_nfe"])
        config = json.loads((out / name / "config.json").read_text())
        assert (config["data"]["name"], config["data"]["vocab_size"], config["data"]["length"]) == (
            "owt", GPT2_VOCAB, LENGTH)
        # The reference's evaluation settings from configs/owt_small.py.
        assert (config["sampling"]["precision"], config["sampling"]["nucleus_p"]) == ("float64", 0.9)
        samples = [json.loads(line) for line in (out / f"{name}_T4.jsonl").read_text().splitlines()]
        assert len(samples) == 2 and all(len(s["tokens"]) == LENGTH and isinstance(s["text"], str)
                                         for s in samples)
    assert rows["mdlm"]["corrector_steps"] == 0 and rows["mdlm"]["corrector_nfe"] == 0
    assert rows["proseco"]["corrector_steps"] == 1 and rows["proseco"]["nfe"] <= 4 + 4
    assert results["paper"]["proseco"]["gen_ppl"] == [23.1, 16.5, 13.2, 10.9]
    assert (out / "owt_vs_paper.png").read_bytes()[:8] == PNG_MAGIC
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "proseco  T=    4" in outputs and "--- mdlm, T=4" in outputs
