"""One loader for every consumer: an exported Hugging Face folder, a hub id, or a minitrain
checkpoint (TrainState) turned into a model, with its tokenizer, for evaluation and generation."""

from pathlib import Path

from minitrain import UserError
from minitrain.data.tokenizer import load_tokenizer
from minitrain.models import hub, lora, registry
from minitrain.models.bert import BertForSequenceClassification
from minitrain.training import fsdp
from minitrain.training.state import load, sharded_folder

KINDS = {"train_gpt2": "causal", "train_mrpc": "classifier"}


def load_model(name: str, kind: str):
    """(model, tokenizer) from an exported folder or hub id, or from a checkpoint file (its run
    folder holds the tokenizer of a GPT-2 run; an MRPC run's is its --model's). `kind` is
    "causal" (GPT-2, Llama, Qwen) or "classifier" (BERT with its trained head). A LoRA checkpoint holds the
    adapters only: the base comes from the run's --init_from / --model, the adapters are merged in."""
    path = Path(name).expanduser()
    if not (path.is_file() or sharded_folder(path)):  # a checkpoint: a file, or a sharded one's folder
        folder = hub.resolve_model_dir(name)
        if kind == "causal":
            return registry.from_pretrained(folder), load_tokenizer(folder)  # its model_type picks the class
        model = BertForSequenceClassification.from_pretrained(folder)
        if model.head_is_new:
            raise UserError(f"{name} has no trained classification head; pass train_mrpc.py's final/ folder.")
        return model, load_tokenizer(folder)
    state = load(path)
    if sharded_folder(path):  # the weights are in DCP's files, read here whole
        state.model = fsdp.read_model(path)
    script = next(s for s, k in KINDS.items() if k == kind)
    usable = state.model_config is not None if kind == "causal" else "classifier.weight" in state.model
    if state.script != script or not usable:
        raise UserError(f"{path} is not a {script}.py checkpoint; pass one, or an exported model folder.")
    if kind == "causal":
        tokenizer = load_tokenizer(path.parent)
        if state.lora:  # adapters only: the base from --init_from, the adapters merged in
            base = registry.from_pretrained(state.config["init_from"])
            return lora.rebuild(base, state.lora, state.model), tokenizer
        model = registry.from_config_dict(state.model_config)  # the family the checkpoint records
        model.load_state_dict(state.model)
        return model, tokenizer
    folder = hub.resolve_model_dir(state.config["model"])
    num_labels = state.model["classifier.weight"].shape[0]
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=num_labels)
    if state.lora:  # adapters and head only: the encoder from --model, the adapters merged in
        return lora.rebuild(model, state.lora, state.model), load_tokenizer(folder)
    model.load_state_dict(state.model)
    return model, load_tokenizer(folder)
