"""Reusable building blocks of the papers' models, one idea per file (import them by full path)."""
