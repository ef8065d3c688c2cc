"""Mutation check of the security-relevant code: `scripts/mutants` (see __main__.py)."""
