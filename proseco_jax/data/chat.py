"""Chat-formatted text for fine-tuning and prompting: a Hugging Face tokenizer and its chat template.

A directory (or a hub repo id) holds `tokenizer.json` (read with the `tokenizers` library) and
`tokenizer_config.json`, whose `chat_template` (or a `chat_template.jinja` file) is rendered with jinja2 as
`transformers` renders it (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`). An SFT example is
the rendered conversation up to the answer (the prompt) followed by the answer's turn, which ends with the
end-of-turn token the template writes and the EOS id (LLaDA's SFT data: `<|eot_id|>` then `<|endoftext|>`
padding). The prompt and the answer are encoded separately, so the prompt's ids are exactly the example's
first ids whatever the BPE would merge across the boundary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from proseco_jax.data import hub
from proseco_jax.data.errors import DataError, one_line

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE)


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is not a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_of(directory: str, config: Mapping[str, Any]) -> str | None:
    path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # Named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _snapshot(repo_id: str) -> str:
    """A hub repo's tokenizer files, downloaded (or read from the hub cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DataError(f"{repo_id!r} is not a directory, and a hub id needs huggingface_hub (pip install "
                        "'proseco_jax[convert]')") from None
    hub.offline_reason()  # Offline: the hub cache only, at once, instead of half a minute of retries.
    try:
        return snapshot_download(repo_id, allow_patterns=list(FILES))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated repo: all mean "give a directory".
        raise DataError(f"cannot fetch the tokenizer of {repo_id!r} from the hub ({hub.failure(e)}); give a "
                        "local tokenizer directory") from None


def _compile_template(source: str, where: str):
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise DataError("chat templates need jinja2 (pip install jinja2)") from None

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise DataError(f"the chat_template of {where} does not parse: {one_line(e)}") from None


class ChatTokenizer:
    """Text <-> ids of a Hugging Face tokenizer, with its chat template; ids lie in [0, vocab_size).

    A directory without a chat template formats a conversation as the plain concatenation of its messages'
    contents (no role markers), so `prompt_ids` is the BOS id (if any) then the contents' ids.
    """

    def __init__(self, tokenizer: Any, *, bos: str | None, eos: str | None, template: str | None,
                 origin: str, special_tokens: Mapping[str, str] | None = None):
        self._tok = tokenizer
        self.origin = origin
        self.bos_token, self.eos_token = bos, eos
        self.bos_id = self._id_of(bos, "bos_token")
        self.eos_id = self._id_of(eos, "eos_token")
        if self.eos_id is None:
            raise DataError(f"tokenizer {origin} names no eos_token (tokenizer_config.json or "
                            f"{SPECIAL_TOKENS_MAP}); SFT examples end with it")
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.has_template = template is not None
        self._template = None if template is None else _compile_template(template, origin)
        self._special = dict(special_tokens or {})

    def _id_of(self, token: str | None, name: str) -> int | None:
        if token is None:
            return None
        i = self._tok.token_to_id(token)
        if i is None:
            raise DataError(f"tokenizer {self.origin}: its {name} {token!r} is not in its vocabulary")
        return int(i)

    @classmethod
    def load(cls, path_or_hub_id: str) -> ChatTokenizer:
        """Reads a tokenizer directory, or a hub repo id (downloaded; needs the network or the hub cache)."""
        where = os.path.expanduser(path_or_hub_id or "")
        if not where:
            raise DataError("no tokenizer given: set data.tokenizer_path to a Hugging Face tokenizer "
                            "directory or hub id")
        if not os.path.isdir(where):
            if os.path.exists(where) or where.count("/") != 1 or where.startswith((".", "/")):
                raise DataError(f"tokenizer {path_or_hub_id!r} is neither a directory nor a hub repo id")
            where = _snapshot(where)
        path = os.path.join(where, TOKENIZER_JSON)
        if not os.path.isfile(path):
            raise DataError(f"{where} holds no {TOKENIZER_JSON}")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError("chat tokenizers need the tokenizers package (pip install tokenizers)") from None
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - the Rust parser raises plain Exception on bad files.
            raise DataError(f"{path} is not a tokenizer file: {one_line(e)}") from None
        config = _read_json(os.path.join(where, TOKENIZER_CONFIG))
        special = _read_json(os.path.join(where, SPECIAL_TOKENS_MAP))
        tokens = {k: _token_text(config.get(k)) or _token_text(special.get(k))
                  for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(tok, bos=tokens["bos_token"], eos=tokens["eos_token"],
                   template=_template_of(where, config), origin=where,
                   special_tokens={k: v for k, v in tokens.items() if v is not None})

    def encode(self, text: str) -> list[int]:
        """The ids of `text`; special tokens written in it (`<|eot_id|>`) become their ids, none is added."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`, special tokens (EOS padding, turn markers) left out unless asked for."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
        """The conversation as text: the chat template's, else the contents concatenated."""
        _check_messages(messages)
        if self._template is None:
            return "".join(str(m["content"]) for m in messages)
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         **self._special)
        except Exception as e:  # noqa: BLE001 - template errors of any kind are the data's or template's.
            raise DataError(f"the chat_template of {self.origin} failed: {one_line(e)}") from None

    def prompt_ids(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
                   ) -> list[int]:
        """The ids of the conversation `messages` ({role, content} dicts) as the model is prompted with it."""
        text = self.render(messages, add_generation_prompt)
        ids = self.encode(text)
        if self._template is None and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def example_ids(self, messages_before_answer: Sequence[Mapping[str, Any]], answer: str
                    ) -> tuple[list[int], int]:
        """(ids of the whole example, prompt length): the prompt's ids, then the answer's turn ending in EOS.

        The answer's ids are those of the text the template adds for the assistant's turn (its end-of-turn
        token included), followed by the EOS id unless that turn already ends with it.
        """
        prompt_text = self.render(messages_before_answer, True)
        full_text = self.render([*messages_before_answer, {"role": "assistant", "content": answer}], False)
        if not full_text.startswith(prompt_text):
            raise DataError(f"the chat_template of {self.origin} does not write the conversation with the "
                            "answer as the prompt followed by the answer's turn")
        prompt = self.prompt_ids(messages_before_answer)
        response = self.encode(full_text[len(prompt_text):])
        if not response or response[-1] != self.eos_id:
            response.append(self.eos_id)
        return prompt + response, len(prompt)


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if not isinstance(messages, (list, tuple)):
        raise DataError(f"messages must be a list of {{role, content}} objects, got "
                        f"{type(messages).__name__}")
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(f"a message must be a {{role, content}} object, got {str(m)[:80]!r}")
