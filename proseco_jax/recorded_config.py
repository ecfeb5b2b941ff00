"""A workdir's recorded config (its config.json) as an ml_collections config file: `--config=<this
file>:WORKDIR` loads the config a model was trained (or converted) with, so `--config.FIELD=VALUE`
overrides apply to it. `cli` adds that flag for a binary given overrides and a --workdir but no --config
(`launch/sample.py --workdir=W --config.sampling.guidance_scale=3`).
"""

from __future__ import annotations

import json

import ml_collections

from proseco_jax import config_base, inference


def get_config(workdir: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(config_base.to_json(inference.workdir_config(workdir))))
