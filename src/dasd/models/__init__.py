"""Loading the student model and tokenizer (hub name or local directory: one code path)."""
