"""The NLU suite uses the session's real NLU server (tests/nlu_process.py)."""
