"""Benchmarks: scripts that measure the library (never imported by it)."""
