"""The assets shipped inside the package (tiny models, sample data): ``${asset:name}`` in configs."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def asset_path(name: str) -> str:
    """Absolute path of a shipped asset."""
    path = ASSETS / name
    if not path.exists():
        raise FileNotFoundError(f"dasd asset {name!r} not found at {path}")
    return str(path)
