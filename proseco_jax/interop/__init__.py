"""Checkpoints of the authors' PyTorch DiT (MDLM / ProSeCo) in and out of proseco_jax workdirs.

`layout` is the tensor-by-tensor table between their `backbone.*` state dict and our Flax parameters,
`sources` reads their Hugging Face models (local or from the Hub) and Lightning checkpoints, and `convert`
writes a workdir from one of them, or a workdir back as their Hugging Face model. `launch/convert.py` is the
command line.
"""
