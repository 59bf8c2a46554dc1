"""Data: sources, the tokenizing pipeline into token shards, blocks and batches,
prompt/completion examples, sentence pairs, tokenizers.
"""
