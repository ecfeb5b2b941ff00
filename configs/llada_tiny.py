"""configs/synthetic.py (ProSeCo on the sparse Markov language) with LLaDA-8B's architecture at test size.

RMSNorm, SwiGLU, rotary (theta 500000), grouped-query attention, no time conditioning; the corpus, the
recipe and [MASK] (the framework's, data.vocab_size) are synthetic.py's.

    python launch/train.py --config=configs/llada_tiny.py --workdir=runs/llada_tiny
"""

import importlib.util
import os

from proseco_jax import config_base


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic.py")
    spec = importlib.util.spec_from_file_location("synthetic_config", path)
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)
    config = synthetic.get_config()
    config.model = config_base.get_config(model_preset="llada_tiny", model="llada").model
    config.model.max_length = config.data.length
    return config
