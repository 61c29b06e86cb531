"""Benchmarks: plain functions returning a dict of figures (not tests)."""
