"""A checkpoint's own chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja),
rendered as transformers' `apply_chat_template` renders it: Jinja2 in a sandbox, trim_blocks and
lstrip_blocks, `raise_exception`, a `tojson` that does not escape HTML, the special tokens
(`bos_token`, `eos_token`, ...) as variables, `add_generation_prompt`, and the `{% generation %}` blocks
that mark the assistant's text in templates written for training.

Which text of a chat the loss learns (`ChatTemplate.segments`): every assistant turn, as
apply_chat_template(..., return_assistant_tokens_mask=True) marks it. A template with
`{% generation %}` blocks says so itself. Any other template by the common convention: a turn is what
the template writes for the assistant's message after the generation prompt (the content and its
end-of-turn token, `<|eot_id|>`, `<|im_end|>`), without the whitespace that separates it from the next
turn, i.e. the text that generation produces and then stops.

Jinja2 is an optional extra (`pip install jinja2`): only a chat data set with a model that has a
template needs it. Templates are code from a model hub: the sandbox keeps them from reaching Python
internals, as transformers does.
"""

import json
import re
from datetime import datetime

from minitrain import UserError

TAGGED = re.compile(r"{%-?\s*generation\s*-?%}")  # a template that marks the assistant's text itself
SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class ChatTemplate:
    def __init__(self, source: str, settings: dict):
        try:
            import jinja2
            import jinja2.ext
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise UserError(
                "the model has a chat template, and rendering it needs jinja2: pip install 'jinja2>=3.1.6'."
            ) from None

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        chat = self

        class Generation(jinja2.ext.Extension):
            """`{% generation %}...{% endgeneration %}` (transformers' AssistantTracker): renders its body
            and records where that text starts and ends in the output rendered so far."""

            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return jinja2.nodes.CallBlock(self.call_method("_span"), [], [], body).set_lineno(lineno)

            def _span(self, caller):
                text, start = caller(), sum(len(b) for b in chat.blocks)
                chat.spans.append((start, start + len(text)))
                return text

        # {% break %} and {% continue %}, which templates use
        extensions = ["jinja2.ext.loopcontrols", Generation]
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=extensions)
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise UserError(
                f"the model's chat template (tokenizer_config.json's chat_template, or chat_template.jinja) is not "
                f"valid Jinja: line {e.lineno}: {e.message}."
            ) from None
        self.error = jinja2.exceptions.TemplateError
        self.tagged = bool(TAGGED.search(source))
        self.blocks, self.spans = [], []  # the output so far and the {% generation %} spans, while rendering
        self.unlearned = 0  # assistant turns that could not be told apart (see segments)
        # the special tokens as text, as transformers passes its special_tokens_map
        self.tokens = {k: settings[k] for k in SPECIAL if isinstance(settings.get(k), str)}

    def render(self, messages: list[dict], add_generation_prompt: bool = False, where: str = "") -> str:
        return self._render(messages, add_generation_prompt, where)[0]

    def _render(self, messages: list[dict], add_generation_prompt: bool, where: str = "") -> tuple[str, list]:
        """The text and its {% generation %} spans (start, end), rendered block by block as
        transformers does, so that a span's start is the length of what came before it. `where` (file:line)
        names the record in the sentence of a template that refuses it."""
        self.blocks, self.spans = [], []
        try:
            extra = dict(tools=None, documents=None, **self.tokens)
            for block in self.template.generate(
                messages=messages, add_generation_prompt=add_generation_prompt, **extra
            ):
                self.blocks.append(block)
            return "".join(self.blocks), sorted(self.spans)
        except self.error as e:  # the template's raise_exception, or an undefined variable
            at = f"{where}: " if where else ""
            raise UserError(f"{at}the model's chat template refused the conversation: {e}") from None
        except Exception as e:  # a template is code: `content + 1` raises TypeError, a bad index IndexError
            at = f"{where}: " if where else ""
            raise UserError(f"{at}the model's chat template failed to render ({type(e).__name__}: {e}).") from None

    def segments(self, messages: list[dict], where: str) -> list[str]:
        """The whole chat's rendering cut into texts that alternate context, learned, context, learned,
        ... (the learned ones: every assistant turn, see the module docstring). A chat that ends with the
        assistant's message must have that turn told apart, or it is refused; an earlier turn that the
        template renders differently once later messages follow (Qwen3 drops an empty thinking block
        from earlier turns) stays context and is counted in `unlearned`."""
        text, spans = self._render(messages, False, where)
        if not self.tagged:
            spans = []
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                before = self.render(messages[:i], add_generation_prompt=True, where=where)
                turn = self.render(messages[: i + 1], where=where)
                start, end = len(before), len(before) + len(turn[len(before) :].rstrip())
                if turn.startswith(before) and text.startswith(turn) and start >= (spans[-1][1] if spans else 0):
                    spans.append((start, end))
                elif i == len(messages) - 1:
                    raise UserError(
                        f"{where}: the chat template renders the conversation differently with and without its "
                        f"answer, so the answer cannot be told apart for the loss."
                    )
                else:
                    self.unlearned += 1
        merged = []  # nested or touching {% generation %} blocks are one learned text
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        cut = [0, *(x for span in merged for x in span), len(text)]
        return [text[a:b] for a, b in zip(cut, cut[1:])]


def template_of(settings: dict) -> ChatTemplate | None:
    """The chat template of a tokenizer's folder settings (tokenizer.settings_of), or None."""
    source = settings.get("chat_template")
    if isinstance(source, list):  # several named templates: the default one, as transformers picks
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    return ChatTemplate(source, settings) if isinstance(source, str) and source else None
