import sys

# a bare GPU image: torch only. sys.modules[name] = None makes `import name` fail and find_spec say
# "not installed", as on a machine without the package.
for name in ("numpy", "tokenizers", "datasets", "tqdm", "transformers", "matplotlib", "tensorboard", "huggingface_hub"):
    sys.modules[name] = None
