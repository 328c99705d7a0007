import pytest

from cings.chat_frame import FALLBACK_TEMPLATE, TemplateError, build_frame, control_tokens, resolve_template


def test_llama3_frame_trims_content_and_ends_with_eot(llama3):
    template, source = resolve_template(llama3)
    assert source == "tokenizer"
    frame = build_frame(llama3, template, with_system=True)
    assert frame.slots == ("system", "user", "assistant")
    assert frame.pieces[2] == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert frame.pieces[3] == "<|eot_id|>" and frame.eot_chars == len("<|eot_id|>")
    assert all(s.active and s.chars is None for s in frame.lead + frame.trail)  # Jinja's trim


def test_qwen3_frame_puts_the_empty_think_block_in_the_prompt(qwen3):
    template, _ = resolve_template(qwen3)
    frame = build_frame(qwen3, template, with_system=False, template_kwargs={"enable_thinking": False})
    assert frame.slots == ("user", "assistant")
    assert frame.pieces[1].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert frame.pieces[2] == "<|im_end|>\n" and frame.eot_chars == len("<|im_end|>")
    assert frame.lead[1].active and frame.lead[1].chars == "\n"  # content.lstrip('\n') on the last turn
    assert not frame.trail[1].active and not frame.lead[0].active


def test_tokenizer_without_template_gets_the_documented_fallback(llama2, tiny_sp):
    for tok in (llama2, tiny_sp):
        template, source = resolve_template(tok)
        assert source.startswith(f"fallback:{FALLBACK_TEMPLATE}")
        frame = build_frame(tok, template, with_system=True)
        assert frame.pieces[0] == "<s>[INST] <<SYS>>\n"
        assert frame.pieces[-1] == " </s>" and frame.eot_chars == len(" </s>")


def test_template_from_a_file_or_a_builtin(tmp_path, tiny_bpe):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}")
    template, source = resolve_template(tiny_bpe, str(path))
    assert source == str(path)
    frame = build_frame(tiny_bpe, template, with_system=False)
    assert frame.pieces == ("<|im_start|>user: ", "<|im_end|><|im_start|>assistant: ", "<|im_end|>")
    assert resolve_template(tiny_bpe, "chatml")[1] == "builtin:chatml"
    with pytest.raises(TemplateError, match="not a file, not a builtin"):
        resolve_template(tiny_bpe, "no-such-template")


def test_templates_that_repeat_or_rewrite_content_are_rejected(tiny_bpe):
    twice = "{% for m in messages %}{{ m['content'] }}|{{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(TemplateError, match="writes the user content 2 times"):
        build_frame(tiny_bpe, twice, with_system=False)
    upper = "{% for m in messages %}{{ m['content'] | upper }}<|im_end|>{% endfor %}"
    with pytest.raises(TemplateError):
        build_frame(tiny_bpe, upper, with_system=False)
    collapse = "{% for m in messages %}{{ m['content'] | replace('  ', ' ') }}<|im_end|>{% endfor %}"
    with pytest.raises(TemplateError, match="half-strips ' '"):
        build_frame(tiny_bpe, collapse, with_system=False)
    rewrite = "{% for m in messages %}{{ m['content'] | replace('e', 'E') }}<|im_end|>{% endfor %}"
    with pytest.raises(TemplateError, match="transforms message content"):
        build_frame(tiny_bpe, rewrite, with_system=False)


def test_a_template_without_a_system_role_says_what_to_do(tiny_bpe):
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                 "{{ m['content'] }}<|im_end|>{% endfor %}")
    with pytest.raises(TemplateError, match="--system-prompt ''"):
        build_frame(tiny_bpe, no_system, with_system=True)
    build_frame(tiny_bpe, no_system, with_system=False)


def test_control_tokens_are_special_tokens_and_those_the_template_writes(qwen3, llama3):
    qwen = control_tokens(qwen3, resolve_template(qwen3)[0])
    assert {"<|im_end|>", "<|im_start|>", "<think>", "</think>", "<|endoftext|>"} <= set(qwen)
    assert "<|fim_prefix|>" not in qwen  # non-special and unused by the template: ordinary vocabulary
    llama = control_tokens(llama3, resolve_template(llama3)[0])
    assert {"<|eot_id|>", "<|start_header_id|>", "<|begin_of_text|>"} <= set(llama)
    assert len(llama[0]) >= len(llama[-1])  # longest first, for the regex
