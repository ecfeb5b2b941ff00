"""Reference checkpoints in and out (`proseco_jax.interop`, `launch/convert.py`): a small PyTorch DiT written
here from the authors' published layout (their `backbone.*` names and shapes, rotate-half rotary, adaLN,
bias-free LayerNorm, GELU-tanh MLP) is the reference; the converted model must compute its logits, export
must give its tensors back, and bad input must be one line naming the problem with nothing written."""

import json
import math
import os
import sys
import types

import jax
import numpy as np
import pytest
from conftest import assert_usage_error, run_binary

from proseco_jax import config_base, inference, sharding
from proseco_jax.data import hub as data_hub
from proseco_jax.data.smiles import REFERENCE_SPECIALS as SPECIALS
from proseco_jax.errors import UsageError
from proseco_jax.interop import convert, layout, sources
from proseco_jax.models import registry

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
nn, F = torch.nn, torch.nn.functional

VOCAB, LENGTH, HIDDEN, HEADS, COND, BLOCKS = 20, 16, 32, 4, 16, 2  # VOCAB includes [MASK].


class TorchLayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:]) * self.weight


class TorchEmbedding(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab, dim))


class TorchTimestep(nn.Module):
    def __init__(self, cond, frequencies=256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, cond), nn.SiLU(), nn.Linear(cond, cond))

    def forward(self, sigma):
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)
        args = sigma[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class TorchRotary(nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10_000 ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, length):
        angles = torch.outer(torch.arange(length, dtype=torch.float32), self.inv_freq)
        angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]  # rotate-half layout
        return angles.cos(), angles.sin()


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class TorchBlock(nn.Module):
    def __init__(self, dim, heads, cond):
        super().__init__()
        self.heads = heads
        self.norm1 = TorchLayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = TorchLayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * dim, dim))
        self.adaLN_modulation = nn.Linear(cond, 6 * dim)

    def forward(self, x, c, cos, sin):
        b, length, dim = x.shape
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        qkv = self.attn_qkv(self.norm1(x) * (1 + scale_a) + shift_a)
        q, k, v = qkv.view(b, length, 3, self.heads, dim // self.heads).unbind(dim=2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim // self.heads)
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v).reshape(b, length, dim)
        x = x + gate_a * self.attn_out(attended)
        return x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m) + shift_m)


class TorchFinal(nn.Module):
    def __init__(self, dim, vocab, cond):
        super().__init__()
        self.norm_final = TorchLayerNorm(dim)
        self.linear = nn.Linear(dim, vocab)
        self.adaLN_modulation = nn.Linear(cond, 2 * dim)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class TorchBackbone(nn.Module):
    """The authors' DiT: modules registered in their order, so parameters() is their EMA order."""

    def __init__(self, time_conditioning):
        super().__init__()
        self.time_conditioning = time_conditioning
        self.vocab_embed = TorchEmbedding(VOCAB, HIDDEN)
        self.sigma_map = TorchTimestep(COND)
        self.rotary_emb = TorchRotary(HIDDEN // HEADS)
        self.blocks = nn.ModuleList([TorchBlock(HIDDEN, HEADS, COND) for _ in range(BLOCKS)])
        self.output_layer = TorchFinal(HIDDEN, VOCAB, COND)

    def forward(self, tokens, sigma):
        if not self.time_conditioning:
            sigma = torch.zeros_like(sigma)
        c = F.silu(self.sigma_map(sigma))
        x = self.vocab_embed.embedding[tokens]
        cos, sin = self.rotary_emb(tokens.shape[1])
        for block in self.blocks:
            x = block(x, c, cos, sin)
        return self.output_layer(x, c)


class TorchModel(nn.Module):
    def __init__(self, time_conditioning=False):
        super().__init__()
        self.backbone = TorchBackbone(time_conditioning)


def random_model(time_conditioning=False, seed=0):
    """Random weights everywhere (adaLN and output included, which a fresh model zeroes)."""
    torch.manual_seed(seed)
    model = TorchModel(time_conditioning)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model.eval()


def hf_config(time_conditioning=False, **changes):
    return {"architectures": ["Proseco"], "model_type": "proseco", "vocab_size": VOCAB,
            "model_length": LENGTH, "hidden_dim": HIDDEN, "cond_dim": COND, "n_blocks": BLOCKS,
            "n_heads": HEADS, "dropout": 0.1, "time_conditioning": time_conditioning, "cfg": False,
            "cfg_num_classes": -1, **changes}


def write_hf_dir(directory, state, config):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()},
                                os.path.join(directory, "model.safetensors"))
    return str(directory)


def one_device_mesh():
    return sharding.make_mesh(config_base.Mesh(), jax.devices()[:1])


def converted_logits(workdir, tokens, sigma):
    loaded = inference.load_workdir(str(workdir), mesh=one_device_mesh())
    return np.asarray(loaded.apply_fn(loaded.params, tokens, sigma)), loaded


def test_layout_lists_parameters_in_the_reference_registration_order():
    model = random_model()
    names = [name for name, _ in model.named_parameters()]
    ref = layout.ReferenceConfig(VOCAB, LENGTH, HIDDEN, COND, BLOCKS, HEADS)
    assert [row.key for row in layout.tensors(ref)] == names
    assert [tuple(p.shape) for _, p in model.named_parameters()] == [row.shape for row in layout.tensors(ref)]


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_converted_model_computes_the_pytorch_dit_logits(tmp_path, time_conditioning):
    model = random_model(time_conditioning)
    source = write_hf_dir(tmp_path / "hf", model.state_dict(), hf_config(time_conditioning))
    workdir = tmp_path / "work"
    config = convert.import_checkpoint(sources.read(source), str(workdir))
    assert config.data.vocab_size == VOCAB - 1 and config.data.length == config.model.max_length == LENGTH
    assert config.model.time_conditioning is time_conditioning and config.data.name == "markov"

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (3, LENGTH)).astype(np.int32)  # [MASK] = VOCAB - 1 included
    sigma = rng.uniform(0.1, 3.0, (3,)).astype(np.float32)
    with torch.no_grad():
        want = model.backbone(torch.from_numpy(tokens).long(), torch.from_numpy(sigma)).numpy()
    got, loaded = converted_logits(workdir, tokens, sigma)
    assert loaded.step == 0 and got.shape == want.shape == (3, LENGTH, VOCAB)
    diff = float(np.max(np.abs(got - want)))
    print(f"max |logit difference| (time_conditioning={time_conditioning}): {diff:.3g}")
    assert diff < 1e-5
    # The noise level reaches the logits exactly when the source conditions on it.
    other, _ = converted_logits(workdir, tokens, sigma + 1.0)
    assert (float(np.max(np.abs(other - got))) > 1e-3) is time_conditioning


def test_export_then_import_is_the_identity(tmp_path):
    model = random_model(seed=1)
    original = {k: v.numpy() for k, v in model.state_dict().items()}
    source = write_hf_dir(tmp_path / "hf", model.state_dict(), hf_config())
    convert.import_checkpoint(sources.read(source), str(tmp_path / "work"))
    ref = convert.export_checkpoint(str(tmp_path / "work"), str(tmp_path / "exported"))
    assert ref == layout.ReferenceConfig.from_hf(hf_config(), "test")

    exported = sources.read(str(tmp_path / "exported"))
    assert exported.config == ref
    assert exported.tensors.keys() == original.keys()
    for key, value in original.items():  # Shapes without vocabulary padding, values bit for bit.
        np.testing.assert_array_equal(exported.tensors[key], value, err_msg=key)
    with open(tmp_path / "exported" / "config.json") as f:
        assert json.load(f) == hf_config()

    convert.import_checkpoint(exported, str(tmp_path / "again"))
    mesh = one_device_mesh()
    first = inference.load_workdir(str(tmp_path / "work"), mesh=mesh).params
    second = inference.load_workdir(str(tmp_path / "again"), mesh=mesh).params
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(first), jax.device_get(second))
    embedding = np.asarray(first["embedding"])
    assert embedding.shape[0] > VOCAB and not embedding[VOCAB:].any()  # Padding rows are zeros.


def _unimportable_module(name):
    """A module for classes whose instances get pickled and that is gone when they are unpickled (as
    omegaconf and the tokenizer are for a reader without those packages)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    return module


def _omegaconf_like(module, values):
    """Objects with omegaconf's pickled layout: containers hold `_content`, value nodes `_val`."""

    def node(value):
        if isinstance(value, dict):
            obj = module.DictConfig()
            obj._content = {k: node(v) for k, v in value.items()}
        else:
            obj = module.AnyNode()
            obj._val = value
        obj._parent, obj._metadata = None, module.Metadata()
        return obj

    return node(values)


def write_lightning_ckpt(path, model, *, ema_shift=1.0, marker=None, drop_shadow=0):
    """A checkpoint as the reference's Lightning module saves it: state_dict, the EMA's state (shadow
    parameters in parameters() order) and hyper_parameters holding an omegaconf config and a tokenizer."""
    module = _unimportable_module("fake_omegaconf_for_test")
    for name in ("DictConfig", "AnyNode", "Metadata", "Tokenizer"):
        cls = type(name, (), {"__module__": module.__name__})
        setattr(module, name, cls)
    tokenizer = module.Tokenizer()
    if marker is not None:  # Unpickling this with pickle itself would run a shell command.
        module.Tokenizer.__reduce__ = lambda self: (os.system, (f"touch {marker}",))
    config = _omegaconf_like(module, {
        "backbone": "dit", "parameterization": "subs", "time_conditioning": False,
        "model": {"hidden_size": HIDDEN, "cond_dim": COND, "length": LENGTH, "n_blocks": BLOCKS,
                  "n_heads": HEADS, "dropout": 0.1}})
    shadow = [p.detach().clone() + ema_shift for p in model.parameters()]
    shadow = shadow[:len(shadow) - drop_shadow]
    torch.save({"state_dict": model.state_dict(),
                "hyper_parameters": {"config": config, "tokenizer": tokenizer},
                "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow}}, path)
    del sys.modules[module.__name__]
    return shadow


def test_lightning_checkpoint_with_ema_converts_the_ema_weights(tmp_path):
    model = random_model(seed=2)
    marker = tmp_path / "code_ran"
    path = str(tmp_path / "last.ckpt")
    write_lightning_ckpt(path, model, ema_shift=1.0, marker=marker)

    raw, ema = sources.read(path), sources.read(path, ema=True)
    assert not marker.exists()  # The checkpoint's own objects never run.
    assert raw.config == ema.config == layout.ReferenceConfig(VOCAB, LENGTH, HIDDEN, COND, BLOCKS, HEADS)
    for name, p in model.state_dict().items():
        np.testing.assert_array_equal(raw.tensors[name], p.numpy())
        shift = 0.0 if name == layout.INV_FREQ else 1.0  # A buffer has no EMA.
        np.testing.assert_allclose(ema.tensors[name], p.numpy() + shift, rtol=0, atol=1e-6)

    convert.import_checkpoint(ema, str(tmp_path / "work"))
    params = jax.device_get(inference.load_workdir(str(tmp_path / "work"), mesh=one_device_mesh()).params)
    qkv = model.state_dict()["backbone.blocks.1.attn_qkv.weight"].numpy() + 1.0
    np.testing.assert_allclose(params["block_1"]["qkv"]["kernel"],
                               qkv.T.reshape(HIDDEN, 3, HEADS, HIDDEN // HEADS), atol=1e-6)


def test_pytorch_model_bin_reads_as_the_safetensors_file(tmp_path):
    state = random_model(seed=3).state_dict()
    from_safetensors = sources.read(write_hf_dir(tmp_path / "hf", state, hf_config()))
    (tmp_path / "bin").mkdir()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    with open(tmp_path / "bin" / "config.json", "w") as f:
        json.dump(hf_config(), f)
    from_bin = sources.read(str(tmp_path / "bin"))
    assert from_bin.config == from_safetensors.config and from_bin.tensors.keys() == state.keys()
    for key, value in from_safetensors.tensors.items():
        np.testing.assert_array_equal(from_bin.tensors[key], value)


def test_convert_binary_writes_a_workdir_that_sample_reads_without_config(tmp_path):
    source = write_hf_dir(tmp_path / "hf", random_model().state_dict(), hf_config())
    workdir, output = tmp_path / "work", tmp_path / "samples.jsonl"
    proc = run_binary("convert.py", f"--source={source}", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["hf", "work"]  # No staging directory left behind.
    proc = run_binary("sample.py", f"--workdir={workdir}", f"--output={output}", "--num_samples=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["tokens"]) == LENGTH and max(r["tokens"]) < VOCAB - 1 for r in rows)


def test_convert_binary_rejects_a_non_checkpoint_and_writes_nothing(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a checkpoint")
    proc = run_binary("convert.py", f"--source={bogus}", f"--workdir={tmp_path / 'work'}")
    assert_usage_error(proc, "is not a PyTorch checkpoint")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_convert_binary_refuses_non_finite_weights_naming_the_tensor_and_writes_nothing(tmp_path):
    state = random_model().state_dict()
    state["backbone.blocks.1.mlp.0.weight"][3, 5] = float("inf")
    source = write_hf_dir(tmp_path / "hf", state, hf_config())
    proc = run_binary("convert.py", f"--source={source}", f"--workdir={tmp_path / 'work'}")
    assert_usage_error(proc, "backbone.blocks.1.mlp.0.weight holds 1 non-finite values (NaN or Inf)")
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def _state(**changes):
    state = {k: v.numpy() for k, v in random_model().state_dict().items()}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("state, config, message", [
    (_state(backbone__blocks__1__norm2__weight=None), hf_config(),
     "missing key backbone.blocks.1.norm2.weight"),
    (_state(backbone__cond_map__embedding_table__weight=np.zeros((3, COND), np.float32)), hf_config(),
     "unexpected key backbone.cond_map.embedding_table.weight"),
    (_state(backbone__blocks__0__attn_out__weight=np.zeros((HIDDEN, HIDDEN + 1), np.float32)), hf_config(),
     f"backbone.blocks.0.attn_out.weight has shape [{HIDDEN}, {HIDDEN + 1}], expected [{HIDDEN}, {HIDDEN}]"),
    (_state(), hf_config(vocab_size=VOCAB + 4), "backbone.vocab_embed.embedding has shape"),
    (_state(), hf_config(n_blocks=3), "missing key backbone.blocks.2.norm1.weight"),
    (_state(), hf_config(n_heads=2), "backbone.rotary_emb.inv_freq has shape [4], expected [8]"),
    (_state(backbone__rotary_emb__inv_freq=np.ones(HIDDEN // HEADS // 2, np.float32)), hf_config(),
     "does not hold the rotary frequencies"),
    ({"transformer.h.0.attn.c_attn.weight": np.zeros((4, 4), np.float32)}, hf_config(),
     "holds no tensor of an MDLM/ProSeCo DiT (its keys: transformer.h.0.attn.c_attn.weight)"),
    (_state(backbone__blocks__0__attn_qkv__weight=np.full((3 * HIDDEN, HIDDEN), np.nan, np.float32)),
     hf_config(), f"backbone.blocks.0.attn_qkv.weight holds {3 * HIDDEN * HIDDEN} non-finite values"),
    (_state(backbone__blocks__1__norm1__weight=np.ones(HIDDEN, np.int64)), hf_config(),
     "backbone.blocks.1.norm1.weight has dtype int64, expected a float"),
    (_state(), hf_config(cfg=True), "classifier-free-guidance"),
    (_state(), {k: v for k, v in hf_config().items() if k != "n_heads"}, "lacks the field(s) n_heads"),
])
def test_bad_source_is_a_usage_error_naming_the_key_and_writes_nothing(tmp_path, state, config, message):
    directory = str(tmp_path / "hf")
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    from safetensors.numpy import save_file

    save_file(state, os.path.join(directory, "model.safetensors"))
    with pytest.raises(UsageError, match="^[^\n]*$") as e:
        convert.import_checkpoint(sources.read(directory), str(tmp_path / "work"))
    assert message in str(e.value)
    assert not (tmp_path / "work").exists() and sorted(os.listdir(tmp_path)) == ["hf"]


def test_unreadable_sources_are_usage_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="has no config.json"):
        sources.read(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="neither a checkpoint file"):
        sources.read(str(tmp_path / "no" / "such" / "path"))
    source = write_hf_dir(tmp_path / "hf", random_model().state_dict(), hf_config())
    with pytest.raises(UsageError, match="drop --ema"):
        sources.read(source, ema=True)
    torch.save({"state_dict": random_model().state_dict()}, tmp_path / "bare.ckpt")
    with pytest.raises(UsageError, match="no readable hyper_parameters.config.model"):
        sources.read(str(tmp_path / "bare.ckpt"))
    path = str(tmp_path / "last.ckpt")
    write_lightning_ckpt(path, random_model(), drop_shadow=1)
    with pytest.raises(UsageError, match="the EMA holds 29 tensors, the DiT of its config has 30"):
        sources.read(path, ema=True)


def test_hub_download_failures_are_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UsageError, match="needs huggingface_hub"):
        sources.read("kuleshov-group/proseco-owt")
    hub = types.ModuleType("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("We have no connection\nto the internet")

    hub.snapshot_download = offline
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setattr(data_hub, "_probe", lambda: None)  # The Hub answers; the download itself fails.
    with pytest.raises(UsageError, match="^kuleshov-group/mdlm-owt is no local path and cannot be downloaded"
                                         "[^\n]*no connection to the internet"):
        sources.read("kuleshov-group/mdlm-owt")


def test_existing_workdir_is_never_overwritten(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_text("mine")
    source = sources.read(write_hf_dir(tmp_path / "hf", random_model().state_dict(), hf_config()))
    with pytest.raises(UsageError, match="already exists"):
        convert.import_checkpoint(source, str(tmp_path / "work"))
    assert os.listdir(tmp_path / "work") == ["keep.txt"]


NUM_CLASSES = 2


class TorchLabels(nn.Module):
    def __init__(self, rows, cond):
        super().__init__()
        self.embedding_table = nn.Embedding(rows, cond)


class TorchGuidedBackbone(TorchBackbone):
    """The authors' DiT with `cfg=true`: a label table of NUM_CLASSES + 1 rows (the last "no label"),
    registered right after the time embedding; c = silu(time) + silu(label)."""

    def __init__(self):
        nn.Module.__init__(self)
        self.time_conditioning = False
        self.vocab_embed = TorchEmbedding(VOCAB, HIDDEN)
        self.sigma_map = TorchTimestep(COND)
        self.cond_map = TorchLabels(NUM_CLASSES + 1, COND)
        self.rotary_emb = TorchRotary(HIDDEN // HEADS)
        self.blocks = nn.ModuleList([TorchBlock(HIDDEN, HEADS, COND) for _ in range(BLOCKS)])
        self.output_layer = TorchFinal(HIDDEN, VOCAB, COND)

    def forward(self, tokens, sigma, labels):
        c = F.silu(self.sigma_map(torch.zeros_like(sigma))) + F.silu(self.cond_map.embedding_table(labels))
        x = self.vocab_embed.embedding[tokens]
        cos, sin = self.rotary_emb(tokens.shape[1])
        for block in self.blocks:
            x = block(x, c, cos, sin)
        return self.output_layer(x, c)


def guided_model():
    torch.manual_seed(3)
    model = TorchModel()
    model.backbone = TorchGuidedBackbone()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model.eval()


def test_guided_checkpoint_converts_with_its_label_table_and_exports_back(tmp_path):
    model = guided_model()
    config = hf_config(cfg=True, cfg_num_classes=NUM_CLASSES)
    ref = layout.ReferenceConfig.from_hf(config, "test")
    assert [row.key for row in layout.tensors(ref)] == [name for name, _ in model.named_parameters()]
    source = write_hf_dir(tmp_path / "hf", model.state_dict(), config)
    imported = convert.import_checkpoint(sources.read(source), str(tmp_path / "work"))
    assert imported.model.num_classes == NUM_CLASSES

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (3, LENGTH)).astype(np.int32)
    sigma = np.zeros((3,), np.float32)
    loaded = inference.load_workdir(str(tmp_path / "work"), mesh=one_device_mesh())
    module = registry.build(loaded.config.model, loaded.config.mask_id + 1)
    for labels in ([0, 1, 2], [1, 1, 0], None):
        torch_labels = torch.full((3,), NUM_CLASSES) if labels is None else torch.tensor(labels)
        with torch.no_grad():
            want = model.backbone(torch.from_numpy(tokens).long(), torch.from_numpy(sigma), torch_labels)
        ours = None if labels is None else np.asarray(labels, np.int32)
        got = np.asarray(module.apply({"params": loaded.params}, tokens, sigma, labels=ours))
        assert float(np.max(np.abs(got - want.numpy()))) < 1e-5, labels

    assert convert.export_checkpoint(str(tmp_path / "work"), str(tmp_path / "exported")) == ref
    exported = safetensors_torch.load_file(os.path.join(tmp_path / "exported", "model.safetensors"))
    with open(os.path.join(tmp_path / "exported", "config.json")) as f:
        assert json.load(f)["cfg_num_classes"] == NUM_CLASSES
    np.testing.assert_array_equal(exported[layout.LABEL_TABLE].numpy(),
                                  model.state_dict()[layout.LABEL_TABLE].numpy())


def smiles_base_config(tmp_path):
    """A qm9 config over the committed QM9 sample, sized for the test DiT's vocabulary and length."""
    with open(os.path.join(os.path.dirname(__file__), "data", "qm9_sample.txt"), encoding="utf-8") as f:
        rows = "".join(f"{i},{line.strip()}\n" for i, line in enumerate(f) if line.strip())
    (tmp_path / "mols.csv").write_text("Index,SMILES\n" + rows)
    base = config_base.get_config()
    base.data.update(name="qm9", tokenizer="smiles", files=str(tmp_path / "mols.csv"), length=LENGTH,
                     vocab_size=VOCAB - 1, data_dir=str(tmp_path / "data"))
    return base


def test_guided_smiles_checkpoint_imports_its_rows_in_our_vocabulary_order_and_exports_back(tmp_path):
    pytest.importorskip("rdkit")
    model = guided_model()
    base = smiles_base_config(tmp_path)
    ours = convert.smiles_tokenizer(config_base.resolve(base))
    # The authors' ids: <mask> = 2, then our tokens reversed and tokens our corpus lacks (for our spare ids).
    lacking = [t for t in ("S", "Cl", "Br", "P", "I", "c", "n", "o", "5", "6") if t not in ours.tokens]
    theirs = [*reversed(ours.tokens), *lacking[: VOCAB - len(SPECIALS) - len(ours.tokens)]]
    config = hf_config(cfg=True, cfg_num_classes=NUM_CLASSES)
    source = write_hf_dir(tmp_path / "hf", model.state_dict(), config)
    with open(os.path.join(source, sources.VOCAB_JSON), "w") as f:
        json.dump({t: i for i, t in enumerate(theirs)}, f)  # Their tokenizer's file: corpus tokens from 0.
    imported = convert.import_checkpoint(sources.read(source), str(tmp_path / "work"), base)
    assert imported.data.name == "qm9" and imported.mask_id == VOCAB - 1
    order = ours.reference_order(theirs)
    assert order[imported.mask_id] == SPECIALS["<mask>"] and sorted(order) == list(range(VOCAB))

    tokens = np.random.default_rng(1).integers(0, VOCAB, (3, LENGTH)).astype(np.int32)
    sigma, labels = np.zeros((3,), np.float32), np.array([0, 1, 2], np.int32)
    with torch.no_grad():  # The authors' model reads their ids; its logit j is their token j.
        want = model.backbone(torch.from_numpy(order[tokens]), torch.from_numpy(sigma),
                              torch.from_numpy(labels).long()).numpy()[..., order]
    loaded = inference.load_workdir(str(tmp_path / "work"), mesh=one_device_mesh())
    module = registry.build(loaded.config.model, loaded.config.mask_id + 1)
    got = np.asarray(module.apply({"params": loaded.params}, tokens, sigma, labels=labels))
    assert float(np.max(np.abs(got[..., :VOCAB] - want))) < 1e-5

    # Export writes the rows in the authors' order under a vocab.json naming them: importing it again
    # gives the same parameters.
    convert.export_checkpoint(str(tmp_path / "work"), str(tmp_path / "exported"))
    with open(os.path.join(tmp_path / "exported", sources.VOCAB_JSON)) as f:
        exported_vocab = json.load(f)
    assert sorted(exported_vocab.values()) == list(range(VOCAB - len(SPECIALS)))  # Their file's form.
    assert not set(SPECIALS) & set(exported_vocab)
    again = convert.import_checkpoint(sources.read(str(tmp_path / "exported")), str(tmp_path / "work2"), base)
    assert again.data == imported.data
    reloaded = inference.load_workdir(str(tmp_path / "work2"), mesh=one_device_mesh())
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(reloaded.params),
                 jax.device_get(loaded.params))


@pytest.mark.parametrize("with_specials", [False, True])
def test_smiles_vocabulary_reads_the_authors_file_and_a_map_with_specials_alike(tmp_path, with_specials):
    tokens = ["C", "c", "(", ")", "1", "O"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if with_specials:
        vocab = {**SPECIALS, **{t: len(SPECIALS) + i for t, i in vocab.items()}}
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab))
    assert sources.read_vocabulary(str(path)) == tuple(tokens)


@pytest.mark.parametrize("vocab", [{"C": 0, "c": 2}, {"<bos>": 1, "C": 0}, ["C"], {"C": "0"}, {}])
def test_smiles_vocabulary_refuses_gaps_misplaced_specials_and_other_shapes(tmp_path, vocab):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab))
    with pytest.raises(UsageError, match="not a SMILES vocabulary"):
        sources.read_vocabulary(str(path))
