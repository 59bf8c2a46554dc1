"""A checkpoint's own chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja),
rendered as transformers' `apply_chat_template` renders it: Jinja2 in a sandbox, trim_blocks and
lstrip_blocks, `raise_exception`, a `tojson` that does not escape HTML, the special tokens
(`bos_token`, `eos_token`, ...) as variables, `add_generation_prompt`.

Jinja2 is an optional extra (`pip install jinja2`): only a chat data set with a model that has a
template needs it. Templates are code from a model hub: the sandbox keeps them from reaching Python
internals, as transformers does.
"""

import json
from datetime import datetime

from minitrain import UserError

SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class ChatTemplate:
    def __init__(self, source: str, settings: dict):
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise UserError(
                "the model has a chat template, and rendering it needs jinja2: pip install 'jinja2>=3.1.6'."
            ) from None

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        loops = ["jinja2.ext.loopcontrols"]  # {% break %} and {% continue %}, which templates use
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=loops)
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise UserError(f"the model's chat template is not valid Jinja ({e}).") from None
        self.error = jinja2.exceptions.TemplateError
        # the special tokens as text, as transformers passes its special_tokens_map
        self.tokens = {k: settings[k] for k in SPECIAL if isinstance(settings.get(k), str)}

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            extra = dict(tools=None, documents=None, **self.tokens)
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)
        except self.error as e:
            raise UserError(f"the model's chat template refused the conversation: {e}") from None

    def split(self, messages: list[dict], where: str) -> tuple[str, str]:
        """(prompt, completion) of a chat that ends with the assistant's message: the prompt is the
        conversation before it with the generation prompt (`<|im_start|>assistant\\n`, ...), the
        completion the rest of the whole chat's rendering (the answer and its end-of-turn token)."""
        prompt = self.render(messages[:-1], add_generation_prompt=True)
        full = self.render(messages)
        if not full.startswith(prompt):
            raise UserError(
                f"{where}: the chat template renders the conversation differently with and without its answer, "
                f"so the answer cannot be told apart for the loss."
            )
        return prompt, full[len(prompt) :]


def template_of(settings: dict) -> ChatTemplate | None:
    """The chat template of a tokenizer's folder settings (tokenizer.settings_of), or None."""
    source = settings.get("chat_template")
    if isinstance(source, list):  # several named templates: the default one, as transformers picks
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    return ChatTemplate(source, settings) if isinstance(source, str) and source else None
