"""Package data: the offline GPT-2 tokenizer."""
