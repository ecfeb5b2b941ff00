"""Downloads from the Hugging Face Hub without a network fail at once, in one line: HF_HUB_OFFLINE is
honoured, and an unreachable Hub is found by one short connect per process instead of half a minute of
retries."""

import os
import socket
import time

import pytest
from conftest import REPO, assert_usage_error, run_binary

from proseco_jax.data import hub, tokenizers
from proseco_jax.data.errors import DataError
from proseco_jax.errors import UsageError
from proseco_jax.interop import sources

constants = pytest.importorskip("huggingface_hub.constants")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty hub cache, HF_HUB_OFFLINE unset, and every connect refused (counted); the probe's verdict
    and huggingface_hub's offline flag are restored afterwards."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket, "create_connection", refuse)
    hub._probe.cache_clear()
    yield attempts
    hub._probe.cache_clear()


def test_an_unreachable_hub_is_probed_once_and_every_download_fails_at_once(no_network):
    start = time.monotonic()
    with pytest.raises(DataError) as excinfo:
        tokenizers.load("gpt2")
    message = str(excinfo.value)
    assert "\n" not in message and "offline: huggingface.co:443 is unreachable" in message, message
    assert "set data.tokenizer_path" in message
    with pytest.raises(UsageError, match="^kuleshov-group/proseco-owt is no local path[^\n]*offline"):
        sources.read("kuleshov-group/proseco-owt")
    with pytest.raises(DataError, match="^[^\n]*offline"):
        tokenizers.load("bert")
    assert no_network == [("huggingface.co", 443)]  # One connect for the whole process.
    assert time.monotonic() - start < 10


def test_hf_hub_offline_is_honoured_without_touching_the_network(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="offline: HF_HUB_OFFLINE=1"):
        tokenizers.load("gpt2")
    assert no_network == []


def test_gpt2_tokenizer_offline_through_a_binary_is_one_line_and_quick(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a few words\nand a few more\n")
    start = time.monotonic()
    proc = run_binary("prepare_data.py", f"--config={os.path.join(REPO, 'configs', 'text_files.py')}",
                      f"--config.data.files={corpus}", "--config.data.document_per=line",
                      "--config.data.tokenizer=gpt2",
                      "--config.data.vocab_size=50257", f"--config.data.data_dir={tmp_path / 'data'}",
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    elapsed = time.monotonic() - start
    assert_usage_error(proc, "cannot load the GPT-2 tokenizer from the Hugging Face hub (offline: "
                             "HF_HUB_OFFLINE=1, and the local Hugging Face cache lacks it")
    assert elapsed < 20, elapsed  # Without the offline switch: 22 retry warnings over 26 s.
