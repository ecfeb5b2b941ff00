"""Ahead-of-time compilation for a TPU slice from a CPU machine (proseco_jax/aot.py, launch/aot_compile.py).

TPU topologies are described by libtpu without a TPU; without libtpu (it is in the `test` extra on x86-64
Linux) those tests skip. Each TPU compile of the tiny model takes seconds, so the file compiles few programs.
"""

import json

import pytest
from conftest import CONFIG, TINY_OVERRIDES, assert_usage_error, run_binary, tiny_config

from proseco_jax import aot, benchmarking, config_base
from proseco_jax.errors import UsageError

needs_libtpu = pytest.mark.skipif(not aot.libtpu_available(), reason="libtpu is not installed (pip install "
                                  "-e '.[tpu]'), so no TPU topology can be described")
TOPOLOGY = "v5e:2x2"  # 4 chips of 16 GiB


@pytest.fixture(scope="module")
def tpu():
    return aot.target(TOPOLOGY)


@needs_libtpu
def test_fsdp_shards_the_train_state_over_the_chips(tpu):
    assert len(tpu.devices) == 4 and tpu.chip == aot.CHIPS["v5e"]
    replicated = aot.compile_for(tiny_config("--config.mesh.fsdp=1"), tpu)
    sharded = aot.compile_for(tiny_config("--config.mesh.fsdp=4"), tpu)
    assert replicated.mesh == {"data": 4, "fsdp": 1, "tensor": 1}
    assert sharded.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert replicated.fits and sharded.fits and replicated.exit_code == 0
    # Parameters, EMA and both Adam moments are split four ways (small leaves are padded to TPU tiles).
    assert sharded.state_bytes < 0.4 * replicated.state_bytes
    assert sharded.argument_bytes < 0.75 * replicated.argument_bytes
    # The state is donated: outputs reuse the argument buffers.
    assert replicated.alias_bytes > 0.9 * replicated.state_bytes
    # XLA's count of the partitioned program agrees with the model's matmul count.
    assert 0.8 < replicated.xla_flops / replicated.model_flops < 1.5
    assert set(replicated.step_seconds()) == {"40%", "60%"}
    assert json.loads(json.dumps(replicated.to_json()))["fits"] is True


@needs_libtpu
def test_sampler_compiles_for_a_tpu_topology(tpu):
    config = tiny_config("--config.sampling.steps=4", "--config.sampling.corrector_steps=1",
                         "--config.sampling.batch_size=8")
    report = aot.compile_for(config, tpu, "sample")
    assert report.program == "sample" and report.batch_size == 8 and report.fits
    assert 0 < report.argument_bytes and report.xla_flops > 0
    # Every model call the settings allow, T + S ceil(T / omega) = 8, on the whole batch of 8.
    assert report.model_flops == 8 * benchmarking.forward_flops(config_base.resolve(config), 8)


@needs_libtpu
def test_an_absurd_batch_does_not_fit_and_exits_1(tpu):
    report = aot.compile_for(tiny_config("--config.train.batch_size=1048576"), tpu)
    assert report.fits is False and report.exit_code == 1
    assert "RESOURCE_EXHAUSTED" in report.error and report.total_bytes is None
    assert any(line.startswith("memory       DOES NOT FIT") for line in aot.summary(report))


def test_cpu_target_is_the_first_local_devices():
    target = aot.target("cpu:4")
    assert len(target.devices) == 4 and target.chip is None and target.platform == "cpu"


@pytest.mark.parametrize("name, fragment", [
    ("cpu:99", "needs 99 CPU devices"),
    ("cpu:x", "expected cpu:N"),
    ("v5e-8", "expected cpu:N or a TPU topology"),
])
def test_bad_target_names_are_usage_errors(name, fragment):
    with pytest.raises(UsageError, match=fragment):
        aot.target(name)


@pytest.mark.parametrize("overrides, fragment", [
    (["--config.mesh.fsdp=3"], "does not divide 4 devices"),
    (["--config.train.batch_size=6"], "not divisible by the data-parallel size"),
])
def test_a_mesh_or_batch_the_devices_cannot_split_is_a_usage_error(overrides, fragment):
    with pytest.raises(UsageError, match=fragment):
        aot.compile_for(tiny_config(*overrides), aot.target("cpu:4"))


def test_binary_compiles_for_cpu_devices_and_prints_json_last():
    proc = run_binary("aot_compile.py", f"--config={CONFIG}", "--topology=cpu:2", *TINY_OVERRIDES,
                      "--config.mesh.fsdp=2", devices=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["target"] == "cpu:2" and report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert report["fits"] is True and report["argument_bytes"] > report["state_bytes"] > 0
    assert report["step_sec"] == {}  # no peak rate is known for a CPU
    assert "memory       fits" in proc.stdout
    assert report["lower_seconds"] > 0 and report["compile_seconds"] > 0
    assert "compile      lowered in" in proc.stdout


@needs_libtpu
def test_binary_unknown_topology_is_one_line_exit_2():
    proc = run_binary("aot_compile.py", f"--config={CONFIG}", "--topology=v9x:2x2", *TINY_OVERRIDES)
    assert_usage_error(proc, "v9x:2x2 is not a TPU topology libtpu knows: INVALID_ARGUMENT")
