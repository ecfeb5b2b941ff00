"""LLaDA: our Flax model against a PyTorch LLaDA written here from the published architecture, and
checkpoints in LLaDA's Hugging Face layout (real key and config.json names) streamed onto a mesh and back.

The PyTorch model follows LLaDA's `modeling_llada.py` (`LLaDALlamaBlock`): RMSNorm in float32, q/k/v
projections without bias, rotate-half rotary embeddings of base rope_theta, grouped key/value heads
expanded with `repeat_interleave`, non-causal softmax attention, silu(ff_proj x) * up_proj x, untied output.
Its module names are LLaDA's, so its `state_dict` keys are the published checkpoints' keys.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

from proseco_jax import config_base, configlib, sharding
from proseco_jax.errors import UsageError
from proseco_jax.interop import llada as hf
from proseco_jax.models import llada, registry
from proseco_jax.state import ModelOnMesh

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

MASK, ROWS = 60, 64
# LLaDA-8B's config.json at toy width (grouped-query attention: 4 query heads, 2 key/value heads).
TINY_HF = {
    "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu", "alibi": False,
    "attention_layer_norm": False, "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
    "d_model": 32, "embedding_size": ROWS, "eos_token_id": 50, "include_bias": False,
    "include_qkv_bias": False, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": MASK, "max_sequence_length": 64,
    "mlp_hidden_size": 48, "mlp_ratio": 4, "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 2,
    "n_layers": 2, "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
    "scale_logits": False, "vocab_size": ROWS, "weight_tying": False,
}
SHARDS = ("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
          "model-00003-of-00003.safetensors")
PUBLISHED_8B_BYTES = 16_031_162_368  # metadata.total_size of LLaDA-8B's index: bfloat16, 2 bytes each.


# ------------------------------------------------------------------------------------- PyTorch LLaDA


class RMSNorm(torch.nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.weight, self.eps = torch.nn.Parameter(torch.ones(width)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate(x, theta):  # x [B, H, L, Dh]
    dh, length = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], -1)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    return x * angles.cos() + torch.cat([-x2, x1], -1) * angles.sin()


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f, self.c = c["d_model"], c["mlp_hidden_size"], c
        kv = c["n_kv_heads"] * d // c["n_heads"]
        linear = lambda i, o: torch.nn.Linear(i, o, bias=False)
        self.attn_norm, self.ff_norm = RMSNorm(d, c["rms_norm_eps"]), RMSNorm(d, c["rms_norm_eps"])
        self.q_proj, self.k_proj, self.v_proj = linear(d, d), linear(d, kv), linear(d, kv)
        self.attn_out = linear(d, d)
        self.ff_proj, self.up_proj, self.ff_out = linear(d, f), linear(d, f), linear(f, d)

    def forward(self, x):
        b, length, d = x.shape
        h, kv, theta = self.c["n_heads"], self.c["n_kv_heads"], self.c["rope_theta"]
        heads = lambda t, n: t.view(b, length, n, d // h).transpose(1, 2)
        y = self.attn_norm(x)
        q, k, v = heads(self.q_proj(y), h), heads(self.k_proj(y), kv), heads(self.v_proj(y), kv)
        q, k = rotate(q, theta), rotate(k, theta)
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, length, d))
        y = self.ff_norm(x)
        return x + self.ff_out(torch.nn.functional.silu(self.ff_proj(y)) * self.up_proj(y))


class TorchLLaDA(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.model = torch.nn.Module()
        self.model.transformer = torch.nn.ModuleDict(dict(
            wte=torch.nn.Embedding(c["embedding_size"], d),
            blocks=torch.nn.ModuleList(Block(c) for _ in range(c["n_layers"])),
            ln_f=RMSNorm(d, c["rms_norm_eps"]),
            ff_out=torch.nn.Linear(d, c["embedding_size"], bias=False)))

    def forward(self, tokens):
        t = self.model.transformer
        x = t.wte(tokens)
        for block in t.blocks:
            x = block(x)
        return t.ff_out(t.ln_f(x))


def write_checkpoint(directory, hf_config, state):
    """config.json, the index and three shards; block tensors in bfloat16 as the published ones."""
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
    top = ("model.transformer.ln_f.weight", "model.transformer.ff_out.weight")
    shard_of = lambda key: 1 if ".blocks.1." in key else (2 if key in top else 0)
    files = [{}, {}, {}]
    for key, value in state.items():
        value = value.astype(ml_dtypes.bfloat16) if ".blocks." in key else value
        files[shard_of(key)][key] = value
    for name, tensors in zip(SHARDS, files, strict=True):
        safetensors_numpy.save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {k: SHARDS[shard_of(k)] for k in state}}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(torch model, its state as float32 numpy, the checkpoint directory written from it)."""
    torch.manual_seed(0)
    model = TorchLLaDA(TINY_HF).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "ln_f" in name:
                p.uniform_(0.5, 1.5)
            p.copy_(p.bfloat16().float())  # Values bfloat16 holds exactly: the bf16 shards lose nothing.
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    directory = str(tmp_path_factory.mktemp("llada") / "checkpoint")
    write_checkpoint(directory, TINY_HF, state)
    return model, state, directory


def placed_model(model_cfg: llada.LLaDAConfig, length: int = 16) -> ModelOnMesh:
    """A config with `model_cfg` on a (data 1, fsdp 4, tensor 2) mesh of the 8 fake devices; data's
    vocabulary is LLaDA's, [MASK] = model.mask_token_id."""
    tree = config_base.get_config(model="llada")
    tree.model = configlib.to_dict(model_cfg)
    tree.data.vocab_size, tree.data.length = model_cfg.mask_token_id, length
    tree.mesh.data, tree.mesh.fsdp, tree.mesh.tensor = 1, 4, 2
    config = config_base.resolve(tree)
    return ModelOnMesh.create(config, sharding.make_mesh(config.mesh))


@pytest.fixture(scope="module")
def loaded(reference):
    """(checkpoint, placed model, parameters streamed onto the mesh)."""
    ckpt = hf.open_checkpoint(reference[2])
    placed = placed_model(ckpt.model)
    return ckpt, placed, hf.load(ckpt, placed.abstract_params())


# ------------------------------------------------------------------------------------- tests


def test_config_json_maps_to_our_section_and_back():
    ours = hf.model_config(TINY_HF, "tiny")
    assert (ours.hidden_size, ours.num_layers, ours.num_heads, ours.num_kv_heads) == (32, 2, 4, 2)
    assert (ours.mlp_hidden_size, ours.vocab_size, ours.mask_token_id) == (48, ROWS, MASK)
    assert ours.rope_theta == 500000.0 and ours.preset == "custom"
    assert hf.model_config(hf.hf_config(ours), "again") == ours


def test_llada_8b_preset_has_the_published_parameter_count():
    cfg = registry.default_config("llada", "llada_8b")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (4096, 32, 32, 32)
    assert (cfg.mlp_hidden_size, cfg.vocab_size, cfg.mask_token_id) == (12288, 126464, 126336)
    module = registry.build(cfg, cfg.mask_token_id + 1)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jax.numpy.zeros((1, 8), "int32"),
                                                jax.numpy.zeros((1,))))
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
    assert count == PUBLISHED_8B_BYTES // 2 == 8_015_581_184


def test_forward_flops_are_twice_the_matmul_parameters_per_token_plus_attention():
    cfg = hf.model_config(TINY_HF, "tiny")
    length = 16
    matmul_params = sum(int(np.prod(row.shape)) for row in hf.tensors(cfg)
                        if row.path[-1] == "kernel")
    attention = cfg.num_layers * 2 * 2 * length * cfg.hidden_size
    assert registry.forward_flops(cfg, MASK + 1, length) == length * (2 * matmul_params + attention)


def test_flax_logits_equal_the_pytorch_llada(reference, loaded):
    model, _, _ = reference
    _, placed, params = loaded
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, ROWS, (4, 16)).astype(np.int32)  # [MASK] and the ids above it included.
    tokens[:, ::3] = MASK
    with torch.no_grad():
        want = model(torch.from_numpy(tokens).long()).numpy()
    apply = placed.under_mesh(jax.jit(placed.apply_fn))
    got = np.asarray(apply(params, tokens, np.zeros(4, np.float32)))
    assert got.shape == want.shape == (4, 16, ROWS)
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    # sigma is ignored: LLaDA has no time conditioning.
    np.testing.assert_array_equal(np.asarray(apply(params, tokens, np.ones(4, np.float32))), got)


def test_loading_places_every_tensor_in_its_sharding_and_no_device_holds_a_whole_parameter(loaded):
    _, placed, params = loaded
    abstract = placed.abstract_params()
    for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(abstract), strict=True):
        assert leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim) and leaf.dtype == want.dtype
    largest_buffer = max(s.data.nbytes for leaf in jax.tree.leaves(params) for s in leaf.addressable_shards)
    largest_param = max(leaf.nbytes for leaf in jax.tree.leaves(params))
    assert largest_buffer < largest_param, (largest_buffer, largest_param)
    # The tables are split over tensor (vocab) and fsdp (embed): each device holds an eighth.
    assert {s.data.shape for s in params["embedding"].addressable_shards} == {(ROWS // 2, 32 // 4)}
    per_device = {}
    for leaf in jax.tree.leaves(params):
        for s in leaf.addressable_shards:
            per_device[s.device] = per_device.get(s.device, 0) + s.data.nbytes
    assert max(per_device.values()) < sum(leaf.nbytes for leaf in jax.tree.leaves(params)) / 2


def test_save_then_load_is_the_identity(reference, loaded, tmp_path):
    _, state, _ = reference
    ckpt, placed, params = loaded
    out = str(tmp_path / "saved")
    hf.save(out, params, ckpt.model, base_config=ckpt.hf_config, max_shard_bytes=40_000)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1 and set(index["weight_map"]) == set(state)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["eos_token_id"] == TINY_HF["eos_token_id"]  # The source's fields are kept.
    again = hf.open_checkpoint(out)
    assert again.model == ckpt.model
    reloaded = hf.load(again, placed.abstract_params())
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    # And the files hold the source's tensors, key by key.
    for name in set(index["weight_map"].values()):
        for key, value in safetensors_numpy.load_file(os.path.join(out, name)).items():
            np.testing.assert_array_equal(value, state[key])


def _assert_one_line(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_a_missing_shard_is_named(reference, tmp_path):
    directory = str(tmp_path / "partial")
    shutil.copytree(reference[2], directory)
    os.remove(os.path.join(directory, SHARDS[1]))
    with pytest.raises(UsageError) as excinfo:
        hf.open_checkpoint(directory)
    _assert_one_line(excinfo, SHARDS[1], "lacks the shard")


def _dit_checkpoint(directory, config):
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    safetensors_numpy.save_file({"backbone.vocab_embed.embedding": np.zeros((33, 8), np.float32)},
                                os.path.join(directory, "model.safetensors"))


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    dit_config = {"architectures": ["Proseco"], "model_type": "proseco", "hidden_dim": 8, "n_blocks": 1}
    _dit_checkpoint(str(tmp_path / "dit"), dit_config)
    with pytest.raises(UsageError) as excinfo:
        hf.open_checkpoint(str(tmp_path / "dit"))
    _assert_one_line(excinfo, "not a LLaDA checkpoint", "proseco")
    # A LLaDA config.json over the DiT's weights.
    _dit_checkpoint(str(tmp_path / "mixed"), TINY_HF)
    ckpt = hf.open_checkpoint(str(tmp_path / "mixed"))
    with pytest.raises(UsageError) as excinfo:
        hf.load(ckpt, placed_model(ckpt.model).abstract_params())
    _assert_one_line(excinfo, "holds no tensor of a LLaDA model", "backbone.vocab_embed.embedding")


@pytest.mark.parametrize("change, fragments", [
    ({"block_type": "sequential"}, ("variant our model does not implement", "block_type='sequential'")),
    ({"weight_tying": True}, ("weight_tying=True",)),
    ({"n_kv_heads": 4}, ("k_proj.weight has shape [16, 32], expected [32, 32]",)),
])
def test_a_config_json_that_does_not_match_the_weights_is_refused(reference, tmp_path, change, fragments):
    directory = str(tmp_path / "changed")
    shutil.copytree(reference[2], directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**TINY_HF, **change}, f)
    with pytest.raises(UsageError) as excinfo:
        ckpt = hf.open_checkpoint(directory)
        hf.load(ckpt, placed_model(ckpt.model).abstract_params())
    _assert_one_line(excinfo, *fragments)


def test_non_finite_weights_are_refused_naming_the_tensor(reference, tmp_path):
    state = {k: v.copy() for k, v in reference[1].items()}
    state["model.transformer.blocks.1.up_proj.weight"][2, :3] = [np.nan, np.inf, -np.inf]
    directory = str(tmp_path / "nan")
    write_checkpoint(directory, TINY_HF, state)
    ckpt = hf.open_checkpoint(directory)
    with pytest.raises(UsageError) as excinfo:
        hf.load(ckpt, placed_model(ckpt.model).abstract_params())
    _assert_one_line(excinfo, "model.transformer.blocks.1.up_proj.weight holds 3 non-finite values")


def _reference_checkpoint(directory, hf_config, seed=0):
    """A random PyTorch LLaDA of `hf_config` (bfloat16-exact weights) written as a checkpoint."""
    torch.manual_seed(seed)
    model = TorchLLaDA(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "ln_f" in name:
                p.uniform_(0.5, 1.5)
            p.copy_(p.bfloat16().float())
    write_checkpoint(directory, hf_config, {k: v.numpy().copy() for k, v in model.state_dict().items()})
    return model


def test_convert_binary_takes_a_small_llada_token_ids_from_its_config_json(tmp_path):
    """A LLaDA-architecture checkpoint of another vocabulary than LLaDA-8B's converts with the default
    (8B) settings: EOS, [MASK] and the vocabulary come from its config.json, and its logits are the
    PyTorch model's."""
    from conftest import run_binary

    from proseco_jax import inference

    small = {**TINY_HF, "embedding_size": 304, "vocab_size": 304, "mask_token_id": 300,
             "eos_token_id": 298, "pad_token_id": 299}
    directory, workdir = str(tmp_path / "small"), str(tmp_path / "work")
    model = _reference_checkpoint(directory, small)
    proc = run_binary("convert.py", f"--source={directory}", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = inference.workdir_config(workdir)
    assert (config.sampling.eos_id, config.mask_id, config.output_vocab_size) == (298, 300, 304)
    assert config.data.tokenizer_path == ""  # LLaDA-8B's tokenizer numbers another vocabulary.
    # The default settings compute in bfloat16; the weights are compared in float32.
    config = config.replace(model=config.model.replace(dtype="float32"))
    mesh = sharding.make_mesh(config_base.Mesh(), jax.devices()[:1])
    loaded_model = inference.load_model(config, workdir, mesh=mesh)
    tokens = np.random.default_rng(2).integers(0, 304, (2, 16)).astype(np.int32)
    with torch.no_grad():
        want = model(torch.from_numpy(tokens).long()).numpy()
    apply = loaded_model.placed.under_mesh(jax.jit(loaded_model.placed.apply_fn))
    got = np.asarray(apply(loaded_model.params, tokens, np.zeros(2, np.float32)))
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("change, fragments", [
    ({"eos_token_id": 300}, ("eos_token_id=300, not a token id of its 304 ids other than [MASK]=300",)),
    ({"pad_token_id": 304}, ("pad_token_id=304",)),
    ({"eos_token_id": None}, ("names no eos_token_id", "sampling.eos_id=126081 is no token of its 304 ids")),
])
def test_token_ids_of_config_json_that_name_no_real_token_are_refused(tmp_path, change, fragments):
    from proseco_jax.interop import convert

    small = {**TINY_HF, "embedding_size": 304, "vocab_size": 304, "mask_token_id": 300, "eos_token_id": 298}
    small = {k: v for k, v in {**small, **change}.items() if v is not None}
    directory = str(tmp_path / "small")
    _reference_checkpoint(directory, small)
    base = config_base.get_config(model="llada")
    base.sampling.eos_id = 126081  # configs/llada_8b_sft.py's: LLaDA-8B's EOS.
    with pytest.raises(UsageError) as excinfo:
        convert.llada_config_for(hf.open_checkpoint(directory), base)
    _assert_one_line(excinfo, *fragments)


def test_a_repo_id_offline_is_one_line(monkeypatch, tmp_path):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UsageError) as excinfo:
        hf.open_checkpoint("GSAI-ML/LLaDA-8B-Instruct")
    _assert_one_line(excinfo, "GSAI-ML/LLaDA-8B-Instruct", "cannot be downloaded")


def test_the_framework_mask_must_be_llada_mask():
    cfg = registry.default_config("llada", "llada_8b")
    with pytest.raises(UsageError) as excinfo:
        cfg.check_vocabulary(32 + 1)
    _assert_one_line(excinfo, "data.vocab_size=32 must equal model.mask_token_id=126336")


def test_bfloat16_compute_stays_close_to_float32(reference, loaded):
    ckpt, placed, params = loaded
    tokens = np.random.default_rng(1).integers(0, ROWS, (4, 16)).astype(np.int32)
    sigma = np.zeros(4, np.float32)
    half = placed_model(ckpt.model.replace(dtype="bfloat16"))
    f32 = np.asarray(placed.under_mesh(jax.jit(placed.apply_fn))(params, tokens, sigma))
    bf16 = np.asarray(half.under_mesh(jax.jit(half.apply_fn))(params, tokens, sigma))
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - f32).max() < 0.05 * np.abs(f32).max()


def test_a_converted_workdir_holds_the_checkpoint_and_samples_with_the_model(reference, tmp_path):
    """launch/convert.py's LLaDA path: the workdir's step-0 weights give the PyTorch model's logits, its
    config records LLaDA's [MASK] inside the table, and it refuses a second import."""
    from proseco_jax import inference
    from proseco_jax.interop import convert

    model, _, directory = reference
    assert hf.is_llada(directory) and not hf.is_llada(str(tmp_path))
    workdir = str(tmp_path / "converted")
    config = convert.import_llada(directory, workdir, config_base.get_config(model="llada"))
    assert (config.mask_id, config.output_vocab_size) == (MASK, ROWS)
    loaded_model = inference.load_workdir(workdir)
    tokens = np.random.default_rng(1).integers(0, ROWS, (2, 16)).astype(np.int32)
    with torch.no_grad():
        want = model(torch.from_numpy(tokens).long()).numpy()
    apply = loaded_model.placed.under_mesh(jax.jit(loaded_model.placed.apply_fn))
    got = np.asarray(apply(loaded_model.params, tokens, np.zeros(2, np.float32)))
    assert np.abs(got - want).max() < 1e-4
    with pytest.raises(UsageError, match="already exists"):
        convert.import_llada(directory, workdir, config_base.get_config(model="llada"))
