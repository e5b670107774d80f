"""The ``<think>`` form of a response: ``"<think>\\n" + reasoning + "\\n</think>\\n\\n" + answer``.

The tags (``THINK_OPEN_TAG``, ``THINK_CLOSE_TAG``) are what parsers look for; the prefix and separator
(``THINK_PREFIX``, ``THINK_SEPARATOR``) are what a conversion writes, newlines included."""

THINK_OPEN_TAG = "<think>"
THINK_CLOSE_TAG = "</think>"
THINK_TAGS = (THINK_OPEN_TAG, THINK_CLOSE_TAG)
THINK_PREFIX = THINK_OPEN_TAG + "\n"
THINK_SEPARATOR = "\n" + THINK_CLOSE_TAG + "\n\n"
