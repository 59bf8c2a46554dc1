"""Chat templates: our rendering equals transformers' apply_chat_template for a Llama-3-style and a
Qwen-style template, and chat data trains on the assistant's answer only, with the ids
apply_chat_template gives."""

import json

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from minitrain import UserError
from minitrain.data import completions
from minitrain.data.chat import template_of
from minitrain.data.tokenizer import load_tokenizer

LLAMA3 = (  # meta-llama/Meta-Llama-3-8B-Instruct's template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # Qwen/Qwen2.5-0.5B-Instruct's, without its tool-calling branches
STRICT = (  # a template that refuses what it cannot render, as Mistral's do
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
)
CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    [
        {"role": "system", "content": "Be brief & use <b>tags</b>."},
        {"role": "user", "content": "  Hi!  "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": 'Blue, "sky" blue.'},
    ],
]
SPECIALS = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}


def model_folder(tmp_path, corpus, kind):
    """A tokenizer folder like the family's: its special tokens, its template, Llama 3's bos prefix."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS[kind], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([corpus.read_text()[:30000]], trainer=trainer)
    if kind == "llama3":
        bos = [(SPECIALS[kind][0], 0)]
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=bos)
        settings = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3}
    else:
        settings = {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": QWEN}
    tok.save(str(tmp_path / "tokenizer.json"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    return tmp_path


@pytest.mark.parametrize("kind", ["llama3", "qwen"])
def test_rendering_and_ids_equal_apply_chat_template(tmp_path, corpus, kind):
    folder = model_folder(tmp_path, corpus, kind)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    tok = load_tokenizer(folder)
    chat = template_of(json.loads((folder / "tokenizer_config.json").read_text()))
    for messages in CHATS:
        for gen in (False, True):
            want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert chat.render(messages, add_generation_prompt=gen) == want
        # the training example: prompt masked, the answer and its end-of-turn learned, then the eos
        eot = tok.token_to_id(SPECIALS[kind][1])
        pairs, _ = completions.read(_jsonl(tmp_path, [messages]), 0.0, chat)
        if kind == "llama3":  # what completions.load does: the tokenizer adds the bos itself
            pairs = [(p.removeprefix("<|begin_of_text|>"), c) for p, c in pairs]
        ex = completions.tokenize(pairs, tok, eot, 512)
        ids = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert ex.seqs[0].tolist() == [*ids, eot]
        prompt_ids = hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
        assert ex.prompt_lens[0] == len(prompt_ids["input_ids"])
        x, y = ex.rows([0], 512)
        learned = tok.decode([t for t in y[0].tolist() if t != -100], skip_special_tokens=False)
        assert learned.startswith(messages[-1]["content"]) and "user" not in learned


def _jsonl(tmp_path, chats):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    return str(path)


def test_a_template_that_raises_is_one_sentence(tmp_path):
    chat = template_of({"chat_template": STRICT})
    assert chat.render([{"role": "user", "content": "a"}]) == "user: a\n"
    with pytest.raises(UserError, match="refused the conversation: Conversation roles must alternate"):
        chat.render([{"role": "assistant", "content": "a"}])


def test_without_a_template_the_plain_rendering_stays(sft_data, sft_model):
    tok = load_tokenizer(sft_model)
    train, _ = completions.load(str(sft_data / "chat.jsonl"), tok, 0, 64, 0.0)
    record = json.loads((sft_data / "chat.jsonl").read_text().splitlines()[0])
    assert train.prompts[0] == completions.render_prompt(record["messages"][:-1])


def test_missing_jinja2_is_one_sentence(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_jinja(name, *args, **kwargs):
        if name.startswith("jinja2"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jinja)
    with pytest.raises(UserError, match="needs jinja2"):
        template_of({"chat_template": QWEN})
