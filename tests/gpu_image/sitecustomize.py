import sys

# The GPU machine's image (KINDS.md of the device tool): torch, numpy, tokenizers, transformers, tqdm
# and pytest are there; `datasets` (and the tracking packages) are not. sys.modules[name] = None
# makes `import name` fail, as it would there (tests/test_gpu_script.py runs bench.gpu --smoke so).
for name in ("datasets", "wandb", "mlflow"):
    sys.modules[name] = None
