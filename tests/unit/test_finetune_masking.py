"""Loss masks checked by hand: only completion / assistant tokens are learned (seed §2.5 step 2.2, §3.4)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from hubflow.errors import StageInputError
from stages.lib.chat import (
    IGNORE,
    encode_messages,
    encode_prompt_completion,
    end_of_turn_ids,
    generation_prompt_ids,
    require_chat_template,
)
from stages.lib.finetune.config import ALPACA, Template
from stages.lib.testing import tiny_tokenizer
from stages.sft.formats import encode_row

PLAIN_TEMPLATE = (
    "{%- for m in messages %}{{- '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)
"""The same layout without {% generation %} blocks: the prefix-difference path finds the turns."""


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def learned(tok, enc) -> str:
    return tok.decode([t for t in enc.labels if t != IGNORE])


def test_prompt_completion_mask_by_hand(tok):
    enc = encode_prompt_completion(tok, "what is 1 plus one ?", " answer 2")
    prompt = tok("what is 1 plus one ?")["input_ids"]
    completion = tok(" answer 2", add_special_tokens=False)["input_ids"]
    assert prompt[0] == tok.bos_token_id
    # s = PROMPT ⊕ y ⊕ <eos>; m_t = 0 on the prompt, 1 on the completion and the eos
    assert enc.input_ids == prompt + completion + [tok.eos_token_id]
    assert enc.labels == [IGNORE] * len(prompt) + completion + [tok.eos_token_id]
    assert learned(tok, enc) == " answer 2</s>"
    assert enc.trained == len(completion) + 1


def test_messages_mask_covers_assistant_content_and_end_marker_only(tok):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "the answer"},
    ]
    enc = encode_messages(tok, messages)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    marked = [tok.convert_ids_to_tokens(t) for t in enc.labels if t != IGNORE]
    # hand check: the two replies and the <|end|> closing each of them; no role marker, no user text
    assert tok.convert_tokens_to_string(marked) == "hello world<|end|>the answer<|end|>"
    assert "<|assistant|>" in tokens and "<|assistant|>" not in marked and "<|user|>" not in marked
    for i, label in enumerate(enc.labels):
        assert label in (IGNORE, enc.input_ids[i])  # labels are the inputs themselves, or ignored


def test_prompt_completion_in_chat_form_learns_only_the_completion_turns(tok):
    prompt = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "earlier reply"},
        {"role": "user", "content": "two"},
    ]
    completion = [{"role": "assistant", "content": "final reply"}]
    row = {"prompt": prompt, "completion": completion}
    enc = encode_row(tok, row, "prompt_completion", {}, ALPACA, where="row 0")
    assert learned(tok, enc) == "final reply<|end|>"


def test_template_without_generation_blocks_uses_turn_boundaries(tok):
    plain = tiny_tokenizer()
    plain.chat_template = PLAIN_TEMPLATE
    enc = encode_messages(
        plain, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "hello"}]
    )
    # the assistant turn is what follows the generation prompt: content, end marker and the template's newline
    assert learned(plain, enc) == "hello<|end|>\n"


def test_instruction_format_renders_the_alpaca_template(tok):
    row = {"instruction": "Add one.", "input": "41", "output": "42"}
    enc = encode_row(tok, row, "instruction", {}, ALPACA, where="row 0")
    text = tok.decode(enc.input_ids, skip_special_tokens=True)
    assert "### Instruction:\nAdd one.\n\n### Input:\n41\n\n### Response:\n42" in text
    assert learned(tok, enc) == "42</s>"
    no_input = encode_row(tok, {**row, "input": ""}, "instruction", {}, ALPACA, where="row 1")
    assert "### Input" not in tok.decode(no_input.input_ids)


def test_column_renames(tok):
    row = {"q": "2+2?", "a": " 4"}
    enc = encode_row(tok, row, "prompt_completion", {"prompt": "q", "completion": "a"}, ALPACA, where="r")
    assert learned(tok, enc) == " 4</s>"


def test_missing_chat_template_is_a_clear_error(tok):
    bare = tiny_tokenizer(chat_template=False)
    with pytest.raises(StageInputError, match="has no chat template") as err:
        require_chat_template(bare, input_name="model")
    assert "chat_template:" in str(err.value)


def test_generation_prompt_and_stop_tokens(tok):
    ids = generation_prompt_ids(tok, [{"role": "user", "content": "hi"}])
    assert tok.convert_ids_to_tokens(ids)[-2:] == ["<|assistant|>", "Ċ"]
    stops = end_of_turn_ids(tok)
    assert stops == [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]


def test_templates_reject_unknown_fields():
    with pytest.raises(ValueError, match="only \\['instruction', 'input'\\]"):
        Template(with_input="{instruction} {context}", without_input="{instruction}")
