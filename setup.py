"""Installs proseco_jax: self-correcting masked diffusion language models in JAX."""

from setuptools import find_packages, setup

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
            "ruff>=0.5",
            "torch==2.13.0",
            "transformers==5.24.0",
            "safetensors==0.8.0",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
        # Real-text evaluation: loading GPT-2 checkpoints (safetensors) and MAUVE.
        "text": [
            "safetensors>=0.4",
            "mauve-text>=0.4",
        ],
    },
)
