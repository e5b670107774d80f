"""Small shared helpers: rank-zero logging, run records (manifest, versions)."""
