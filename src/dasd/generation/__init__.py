"""Generation engines: sampling with per-token log-probabilities and teacher-forced scoring.

One interface (``Engine``) behind three implementations: HF transformers (CPU or GPU), vLLM in-process
and an OpenAI-compatible HTTP client. Teacher sampling, DAS scoring, mixed-policy revision and
evaluation all go through it.
"""
