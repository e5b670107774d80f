"""Answer grading (and, later, evaluation runs)."""
