"""Bare in-process parse throughput of the NLU model, the floor of the comparison.

Runs in the NLU environment: ``python -m bench.e2e.bare_parse N`` reads texts
(a JSON list) on stdin, parses N of them one at a time with the trained model
and prints texts per second, and each text's predicted intent.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    texts = json.loads(sys.stdin.read())

    from services.nlu.backend import RasaBackend
    from services.nlu.server import NluSettings

    backend = RasaBackend(NluSettings.from_env().model_path)
    backend.parse_many(texts[:8])  # warm up
    started = time.perf_counter()
    for i in range(count):
        backend.parse_many([texts[i % len(texts)]])
    elapsed = time.perf_counter() - started
    intents = [result.intent.name for result in backend.parse_many(texts)]
    print(json.dumps({"texts_per_second": count / elapsed if count else None, "intents": intents}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
