"""A CPU-scale reasoning world: synthetic problems, strategy-mixture teacher solutions, a weak student style."""

from dasd.world.generator import (
    DEFAULT_WEIGHTS,
    FAMILIES,
    STRATEGIES,
    WEAK_CORRECT,
    Problem,
    check_solution,
    generate_problem,
    is_heldout,
    make_records,
    record_problem,
    solve,
)

__all__ = [
    "DEFAULT_WEIGHTS", "FAMILIES", "STRATEGIES", "WEAK_CORRECT", "Problem", "check_solution",
    "generate_problem", "is_heldout", "make_records", "record_problem", "solve",
]
