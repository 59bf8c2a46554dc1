"""The models: GPT-2 and BERT (loading and exporting Hugging Face checkpoints), LoRA adapters."""
