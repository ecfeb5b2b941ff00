"""Text prompts for LLaDA-style models: a tiny LLaDA (random weights) whose [MASK] lies inside its table with
chat tokens above it, a tiny Hugging Face tokenizer directory written here (`tokenizers` + a chat template),
and `launch/sample.py --prompt/--prompt_file --chat` on top; a stub model pins where EOS comes."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, assert_usage_error, run_binary, usage_error
from test_sft_train import write_tokenizer as write_sft_tokenizer

from proseco_jax import checkpoint, config_base, inference, prompts, sharding
from proseco_jax.data.chat import ChatTokenizer
from proseco_jax.state import ModelOnMesh, TrainState

MASK, ROWS, LENGTH = 40, 48, 32  # [MASK] = data.vocab_size inside a 48-row table, as LLaDA's 126336 of 126464
BOS, EOS, START, END, EOT = 38, 39, 41, 42, 43  # LLaDA's layout: BOS/EOS below the mask, chat tokens above
WORDS = ["<unk>", "what", "is", "three", "plus", "four", "seven", "the", "answer", "user", "assistant"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
            "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def write_tokenizer(directory: str, template: str | None = TEMPLATE) -> str:
    """A word-level tokenizer.json of ids [0, 44) (filler words up to BOS) and its tokenizer_config.json
    (with `template` as its chat template, none when None)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(WORDS)}
    vocab.update({f"w{i}": i for i in range(len(WORDS), BOS)})
    specials = {"<|startoftext|>": BOS, "<|endoftext|>": EOS, "<|mdm_mask|>": MASK,
                "<|start_header_id|>": START, "<|end_header_id|>": END, "<|eot_id|>": EOT}
    vocab.update(specials)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in specials])
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    config = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    if template is not None:
        config["chat_template"] = template
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return directory


def llada_config(tokenizer_path: str = "", **sampling) -> config_base.Config:
    config = config_base.from_file(os.path.join(REPO, "configs", "llada_tiny.py"))
    config.data.vocab_size, config.data.length, config.data.tokenizer_path = MASK, LENGTH, tokenizer_path
    config.model.vocab_size, config.model.mask_token_id, config.model.max_length = ROWS, MASK, LENGTH
    config.sampling.update(dict(sampler="llada_block", steps=4, block_length=4, corrector_steps=1,
                                batch_size=2, **sampling))
    return config_base.resolve(config)


def eos_certain(params):
    """The random LLaDA made to put EOS first at every position: a large constant residual direction
    (embedding column 0) that only EOS's output column reads."""
    params = jax.tree.map(np.array, params)
    params["embedding"][:, 0] += 100.0
    params["output"]["kernel"][0, :] = 0.0
    params["output"]["kernel"][0, EOS] = 50.0
    return params


def write_workdir(workdir: str, config: config_base.Config, edit=lambda p: p) -> None:
    """config.json and a step-0 checkpoint of randomly initialised (then edited) parameters."""
    placed = ModelOnMesh.create(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
    params = jax.tree.map(jnp.asarray, edit(placed.init_params(jax.random.key(0))))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state={})
    os.makedirs(workdir)
    config_base.save_json(config, workdir)
    manager = checkpoint.make_manager(workdir, keep=1)
    checkpoint.save(manager, 0, state, None)
    manager.wait_until_finished()
    manager.close()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def eos_workdir(tmp_path_factory, tokenizer_dir):
    workdir = str(tmp_path_factory.mktemp("llada") / "work")
    write_workdir(workdir, llada_config(tokenizer_dir), eos_certain)
    return workdir


def test_chat_prompts_keep_their_tokens_and_generation_stops_at_eos(eos_workdir, tokenizer_dir, tmp_path):
    prompt_file = tmp_path / "prompts.jsonl"
    records = [{"task_id": "a", "messages": [{"role": "user", "content": "what is three plus four"}]},
               {"task_id": "b", "prompt": "what is the answer"}]
    prompt_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    output = str(tmp_path / "answers.jsonl")
    args = (f"--workdir={eos_workdir}", f"--output={output}", f"--prompt_file={prompt_file}", "--chat",
            "--gen_length=8")
    proc = run_binary("sample.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = sorted((json.loads(line) for line in open(output)), key=lambda r: r["prompt_index"])
    tokenizer = ChatTokenizer.load(tokenizer_dir)
    expected = [tokenizer.prompt_ids(records[0]["messages"]),
                tokenizer.prompt_ids([{"role": "user", "content": records[1]["prompt"]}])]
    assert len(expected[0]) != len(expected[1])  # two prompt lengths: two batches
    assert [r["task_id"] for r in rows] == ["a", "b"] and [r["sample_index"] for r in rows] == [0, 0]
    for row, ids in zip(rows, expected):
        assert max(ids) > MASK  # the chat tokens lie above the mask, as LLaDA's
        assert row["tokens"][: len(ids)] == ids and row["prompt_length"] == len(ids)
        assert len(row["tokens"]) == len(ids) + 8
        # EOS first: the first block ends in EOS, so the sample stops there (2 of the 4 steps) and the rest
        # of the sequence is EOS; the completion before EOS is empty.
        assert row["tokens"][len(ids):] == [EOS] * 8
        assert row["completion_ids"] == [] and row["text"] == ""
        assert row["predictor_nfe"] == 2 and row["nfe"] == row["predictor_nfe"] + row["corrector_nfe"]
    again = run_binary("sample.py", *args)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]


def test_bad_text_prompts_are_one_line_usage_errors_that_leave_no_output(eos_workdir, tmp_path):
    output = tmp_path / "s.jsonl"
    long_prompt = " ".join(["what"] * LENGTH)
    assert_usage_error(run_binary("sample.py", f"--workdir={eos_workdir}", f"--output={output}",
                                  f"--prompt={long_prompt}"), "longer than the sequence")
    assert not output.exists()
    bare = write_tokenizer(str(tmp_path / "bare"), template=None)
    prompt_file = tmp_path / "blank.jsonl"
    prompt_file.write_text(json.dumps({"prompt": " "}) + "\n")
    for args, message in [
        ((f"--prompt_file={tmp_path / 'missing.txt'}",), "prompt file not found"),
        (("--prompt=",), "prompt 0 ('') has no tokens"),
        ((f"--prompt_file={prompt_file}",), "prompt 0 (' ') has no tokens"),
        # The real rule: the block sampler (block_length=4 here) generates whole blocks.
        (("--prompt=what is seven", "--gen_length=7"), "7 generated positions are not whole blocks of "
         "sampling.block_length=4"),
        (("--prompt=what is seven", "--gen_length=8", "--config.sampling.steps=3"),
         "steps=3 is not a multiple of the 2 blocks"),
        (("--prompt=what is seven", "--chat", f"--tokenizer={bare}"), "--chat needs a chat template"),
    ]:
        assert_usage_error(usage_error("sample.py", f"--workdir={eos_workdir}", f"--output={output}", *args),
                           message)
        assert not output.exists(), args


def test_a_text_prompt_with_default_flags_writes_its_completion(tmp_path):
    """The tiny LLaDA fine-tuning config (data.length 64, blocks of 16, 32 steps) and its byte-level
    tokenizer: the longest generation that the default steps divide into whole blocks is 2 blocks."""
    tokenizer = write_sft_tokenizer(str(tmp_path / "tokenizer"))
    config = config_base.from_file(os.path.join(REPO, "configs", "llada_tiny_sft.py"))
    config.data.files, config.data.tokenizer_path = str(tmp_path / "*.jsonl"), tokenizer
    workdir, output = str(tmp_path / "work"), tmp_path / "answer.jsonl"
    write_workdir(workdir, config_base.resolve(config))
    proc = run_binary("sample.py", f"--workdir={workdir}", f"--output={output}", "--prompt=rev abcde")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert row["prompt"] == "rev abcde" and row["prompt_length"] == len("rev abcde") + 1  # BOS + bytes
    assert len(row["tokens"]) == row["prompt_length"] + 32
    assert row["text"] == ChatTokenizer.load(tokenizer).decode(row["completion_ids"])


def stub(position_of_eos: int, word: int):
    """Logits with `word` first before absolute position `position_of_eos` and EOS first from it on."""
    def apply_fn(params, tokens, sigma):
        del params, sigma
        target = jnp.where(jnp.arange(tokens.shape[1]) < position_of_eos, word, EOS)
        return jnp.broadcast_to(10.0 * jax.nn.one_hot(target, ROWS), tokens.shape + (ROWS,))
    return apply_fn


def test_completions_end_at_eos_and_a_resumed_run_draws_the_same_samples(tmp_path, tokenizer_dir):
    config = llada_config(tokenizer_dir)
    workdir = str(tmp_path / "work")
    write_workdir(workdir, config)
    loaded = inference.load_workdir(workdir, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
    loaded = dataclasses.replace(loaded, placed=dataclasses.replace(loaded.placed, apply_fn=stub(10, 6)))
    tokenizer = prompts.chat_tokenizer(config, workdir)  # the recorded data.tokenizer_path
    records = [{"prompt": "what is three plus four"}, {"prompt": "the answer"}, {"prompt": "what is seven"}]
    run = prompts.prepare_prompts(config, tokenizer, records, chat=False, gen_length=8)
    assert run.settings.eos_id == EOS and run.gen_length == 8
    assert run.settings.stop_on_eos == "sample"  # A sample's record may not depend on its batchmates.
    assert [len(ids) for ids in run.ids] == [6, 3, 4]  # BOS + words
    # Sorted by length, one length per batch: [1], [2], [0].
    assert [job.prompt for job in run.jobs()] == [1, 2, 0]
    rows = [row for batch in prompts.complete_prompts(loaded, tokenizer, run) for row in batch]
    for row in rows:
        length = row["prompt_length"]
        assert row["tokens"][:length] == run.ids[row["prompt_index"]]
        assert row["completion_ids"] == [6] * (10 - length)  # "seven" up to EOS, nothing after it
        assert row["text"] == " ".join(["seven"] * (10 - length))
    resumed = [row for batch in prompts.complete_prompts(loaded, tokenizer, run, start=1) for row in batch]
    assert resumed == rows[1:]
