"""Text formats shared by every pipeline step: the ``<think>`` form (``think``), gpt-oss harmony completions
and token/character spans (``harmony``), answer extraction and grading (``grading``). Pure Python on strings
and tokenizers: no model, no config."""
