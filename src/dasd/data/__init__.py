"""Data: the released record format, chat templating and loss masks, response selection, packing."""
