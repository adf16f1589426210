"""Benchmark of the NLU service: gRPC against in-process Rasa."""
