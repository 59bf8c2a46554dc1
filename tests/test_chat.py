"""Chat templates: our rendering equals transformers' apply_chat_template for a Llama-3-style and a
Qwen-style template, and chat data trains on every assistant turn only, with the ids and the
assistant mask apply_chat_template(..., return_assistant_tokens_mask=True) gives."""

import json

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from minitrain import UserError
from minitrain.data import completions
from minitrain.data.chat import template_of
from minitrain.data.tokenizer import eot_id, load_tokenizer

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
# the same two templates with transformers' {% generation %} blocks around each assistant turn: they
# render the same text, and give apply_chat_template's return_assistant_tokens_mask
TAGGED = {
    "llama3": (
        "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}{{ '<|start_header_id|>' + "
        "message['role'] + '<|end_header_id|>\n\n' }}{% if message['role'] == 'assistant' %}{% generation %}"
        "{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}{% else %}"
        "{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "qwen": QWEN.replace(
        """        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}""",
        """        {%- if message.role == "assistant" %}
            {{- '<|im_start|>' + message.role + '\\n' }}
            {%- generation %}{{- message.content + '<|im_end|>' }}{%- endgeneration %}
            {{- '\\n' }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
        {%- endif %}""",
    ),
}
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
    assert TAGGED[kind] != LLAMA3 and "generation" in TAGGED[kind]
    for messages in CHATS:
        for gen in (False, True):
            want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert chat.render(messages, add_generation_prompt=gen) == want
            assert template_of({**chat.tokens, "chat_template": TAGGED[kind]}).render(messages, gen) == want
        # the training example: the ids apply_chat_template gives, then the run's end-of-text; the
        # context up to the first answer is the prompt
        eot = tok.token_to_id(SPECIALS[kind][1])
        train, _ = completions.load(_jsonl(tmp_path, [messages]), tok, eot, 512, 0.0)
        ids = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert train.seqs[0].tolist() == [*ids, eot]
        first = messages[: [m["role"] for m in messages].index("assistant")]
        prompt_ids = hf.apply_chat_template(first, tokenize=True, add_generation_prompt=True, return_dict=True)
        assert train.prompt_lens[0] == len(prompt_ids["input_ids"])
        prompt = hf.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        assert train.prompts[0] == prompt.removeprefix("<|begin_of_text|>")  # the tokenizer adds it


@pytest.mark.parametrize("kind", ["llama3", "qwen"])
def test_every_assistant_turn_is_learned_as_return_assistant_tokens_mask_marks_it(tmp_path, corpus, kind):
    """A template with {% generation %} blocks (its spans) and the same template without them (the
    convention: what follows the generation prompt, to the end-of-turn token) give the mask
    transformers gives for the tagged one, on a chat with two assistant turns; the end-of-text the run
    appends is learned too."""
    folder = model_folder(tmp_path, corpus, kind)
    messages = CHATS[1]
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    want = hf.apply_chat_template(
        messages, chat_template=TAGGED[kind], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    eot = eot_id(load_tokenizer(folder))  # the run's end-of-text, as training picks it
    for source in (TAGGED[kind], settings["chat_template"]):
        (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": source}))
        tok = load_tokenizer(folder)
        train, _ = completions.load(_jsonl(tmp_path, [messages]), tok, eot, 512, 0.0)
        assert train.seqs[0].tolist() == [*want["input_ids"], eot]
        assert train.masks[0].tolist() == [*map(bool, want["assistant_masks"]), True]
        turns = [tok.decode(run, skip_special_tokens=False) for run in _runs(train, 0)]
        assert turns == LEARNED[kind]  # each content and its end-of-turn token; the end-of-text
        x, y = train.rows([0], 512)
        assert (y[0] != -100).sum() == train.targets([0], 512) == sum(want["assistant_masks"]) + 1


LEARNED = {
    "llama3": ["Hello.<|eot_id|>", 'Blue, "sky" blue.<|eot_id|><|eot_id|>'],  # the folder's eos is <|eot_id|>
    "qwen": ["Hello.<|im_end|>", 'Blue, "sky" blue.<|im_end|>', "<|endoftext|>"],  # "\n" between them: context
}


def _runs(examples, i) -> list[list[int]]:
    """The learned ids of example i, one list per run of consecutive targets."""
    runs, mask = [], examples.target_mask(i)
    for k, t in enumerate(examples.seqs[i].tolist()):
        if mask[k]:
            runs.append([t]) if k == 0 or not mask[k - 1] else runs[-1].append(t)
    return runs


def test_the_plain_rendering_learns_every_assistant_content(sft_model, tmp_path):
    tok = load_tokenizer(sft_model)
    eot = tok.token_to_id("<|endoftext|>")
    messages = CHATS[1]
    train, _ = completions.load(_jsonl(tmp_path, [messages, CHATS[0]]), tok, eot, 512, 0.0)
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)[:-1]  # the last one ends with eot
    assert tok.decode(train.seqs[0].tolist(), skip_special_tokens=False) == text + "<|endoftext|>"
    runs = [tok.decode(run, skip_special_tokens=False) for run in _runs(train, 0)]
    assert runs == ["Hello.", 'Blue, "sky" blue.<|endoftext|>']
    assert train.prompts[0] == completions.render_prompt(messages[:-1])
    assert train.masks[1] is None  # a one-turn chat is a prompt and a completion, as before
    # the cut to block_size + 1 keeps the mask aligned; no learned token left: dropped
    n = len(train.seqs[0])
    short = completions.tokenize([completions.render_plain(messages)], tok, eot, n - 4)
    assert short.masks[0].tolist() == train.masks[0].tolist()[: n - 3]
    first = int(train.masks[0].argmax())
    assert completions.tokenize([completions.render_plain(messages)], tok, eot, first - 1).dropped == 1


def test_nested_or_touching_generation_blocks_are_one_learned_text():
    source = (
        "{% for m in messages %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' %}{% generation %}"
        "{% generation %}{{ m['content'] }}{% endgeneration %}{{ '.' }}{% endgeneration %}{% generation %}"
        "{{ '</s>' }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{{ '\\n' }}{% endfor %}"
    )
    texts = template_of({"chat_template": source}).segments(CHATS[1], "x.jsonl:1")
    assert texts[1::2] == ["Hello..</s>", 'Blue, "sky" blue..</s>'] and texts[0].endswith("assistant: ")


def test_a_turn_rendered_differently_later_stays_context():
    """As Qwen3's template does with its empty thinking block: only on the last assistant message."""
    source = (
        "{% for m in messages %}{{ '<' + m['role'] + '>' }}{% if m['role'] == 'assistant' and loop.last %}"
        "{{ '<think></think>' }}{% endif %}{{ m['content'] + '</s>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
    )
    chat = template_of({"chat_template": source})
    texts = chat.segments(CHATS[1], "x.jsonl:1")
    assert texts[1::2] == ['<think></think>Blue, "sky" blue.</s>'] and chat.unlearned == 1
    assert "".join(texts) == chat.render(CHATS[1])


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


@pytest.mark.parametrize("kind", ["llama3", "qwen"])
def test_generate_renders_chat_prompts_with_the_models_template(tmp_path, corpus, kind):
    """python -m minitrain.generate --prompt_file chats.jsonl: each chat rendered as
    apply_chat_template(..., add_generation_prompt=True) renders it, and the model continues those ids."""
    import torch

    from minitrain.models.llama import Llama, LlamaConfig
    from minitrain.tools import generate

    (tmp_path / "model").mkdir()
    folder = model_folder(tmp_path / "model", corpus, kind)
    tok = load_tokenizer(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    model = Llama(cfg).eval()
    model.save_pretrained(folder)
    chats = [*CHATS, CHATS[1][:-1]]  # an answer to leave out, and a chat that ends with the question
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    run = generate.GenerateConfig(
        model=str(folder), prompt_file=str(tmp_path / "chats.jsonl"), max_new_tokens=4, temperature=0.0,
        out=str(tmp_path / "answers.jsonl"), device="cpu",
    )  # fmt: skip
    generate.main(run)
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    for messages, row in zip(chats, rows, strict=True):
        asked = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        want = hf.apply_chat_template(asked, add_generation_prompt=True, tokenize=False)
        assert row["prompt"] == want.removeprefix("<|begin_of_text|>")  # the tokenizer adds it once
        ids = hf.apply_chat_template(asked, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert tok.encode(row["prompt"]).ids == ids
        new = model.generate(torch.tensor([ids]), 4, temperature=0.0)[0, len(ids) :].tolist()
        assert row["completion"] == tok.decode(new)  # greedy: the model's own continuation of those ids


def _chat_model(folder, corpus, kind="llama3", vocab_size=None):
    """model_folder's tokenizer and template with a tiny random Llama beside it."""
    import torch

    from minitrain.models.llama import Llama, LlamaConfig

    folder.mkdir()
    model_folder(folder, corpus, kind)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size or load_tokenizer(folder).get_vocab_size(), hidden_size=32,
                      intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128)  # fmt: skip
    Llama(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case,words",
    [
        ("tokenizer of another model", "the tokenizer has 400 tokens but the model only 100 (the vocab_size of "),
        ("template not jinja", "chat_template, or chat_template.jinja) is not valid Jinja: line 1: "),
        ("template fails", "chats.jsonl:1: the model's chat template failed to render (TypeError: "),
        ("record refused", "chats.jsonl:2: the model's chat template refused the conversation: Conversation roles"),
    ],
)
def test_bad_chat_input_is_one_sentence_exit_2_nothing_written(tmp_path, corpus, cache, capsys, case, words):
    from tests.test_faults import cli_fails, tiny_argv

    folder = _chat_model(tmp_path / "model", corpus, vocab_size=100 if case == "tokenizer of another model" else None)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    source = {"template not jinja": "{% for m in messages %}{{ m.content }", "template fails": "{{ messages + 1 }}"}
    source["record refused"] = STRICT
    settings["chat_template"] = source.get(case, settings["chat_template"])
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    chats = [CHATS[0]] * 40
    if case == "record refused":
        chats[1] = [{"role": "system", "content": "Be brief."}, *CHATS[0]]  # STRICT wants the user first
    path = _jsonl(tmp_path, chats)
    out = tmp_path / "out"
    line = cli_fails(tiny_argv(corpus, out, cache, init_from=str(folder), data=path, block_size=64), capsys)
    assert words in line and not out.exists(), line
    if case == "tokenizer of another model":
        assert str(folder / "config.json") in line
