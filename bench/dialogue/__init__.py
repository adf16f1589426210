"""Benchmark of the dialogue service."""
