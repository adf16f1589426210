"""Rasa's own server, set up the way its users would run it for this bot.

The project is made from this repository's own sources: the NLU data and
pipeline of services/nlu, the starter bot's texts from the dialogue domain,
one rule per intent (plus one for the NLU fallback), the REST channel (and the
Messenger channel, for the receipts of the Messenger-shaped load) and a
Redis lock store. The trained model is cached, named by a hash of what it is
made from, so a second run starts at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.support import REPO
from mesh import cache_dir

NLU_DIR = REPO / "services" / "nlu"
DOMAIN = REPO / "services" / "dialogue" / "domains" / "default.yml"


def _intents_and_entities(nlu_data: str) -> tuple[list[str], list[str]]:
    data = yaml.safe_load(nlu_data)
    intents = [item["intent"] for item in data["nlu"] if "intent" in item]
    entities = sorted(set(re.findall(r"\]\((\w+)\)", nlu_data)))
    return intents, entities


def _response_text(responses: dict[str, Any], actions: dict[str, Any], intent: str) -> str:
    """The starter bot's first text for an intent; for actions, their question."""
    variants = responses.get(intent)
    if isinstance(variants, list) and variants:
        return str(variants[0]["text"])
    action = actions.get(intent) or {}
    asked = (action.get("responses") or {}).get("ask") or [{"text": intent}]
    return str(asked[0]["text"])


def project_files() -> dict[str, str]:
    """The project's files by relative path, made from this repository's sources."""
    nlu_data = (NLU_DIR / "data" / "nlu.yml").read_text()
    intents, entities = _intents_and_entities(nlu_data)
    bot = yaml.safe_load(DOMAIN.read_text())
    responses, actions = bot.get("responses") or {}, bot.get("actions") or {}
    utter = {
        f"utter_{intent}": [{"text": _response_text(responses, actions, intent)}]
        for intent in intents
    }
    utter["utter_fallback"] = [{"text": str(responses["fallback"][0]["text"])}]
    domain = {
        "version": "3.1",
        "intents": intents,
        "entities": entities,
        "responses": utter,
        "session_config": {"session_expiration_time": 60, "carry_over_slots_to_new_session": True},
    }
    rules = [
        {"rule": f"answer {intent}", "steps": [{"intent": intent}, {"action": f"utter_{intent}"}]}
        for intent in intents
    ]
    rules.append(
        {
            "rule": "answer what was not understood",
            "steps": [{"intent": "nlu_fallback"}, {"action": "utter_fallback"}],
        }
    )
    config = yaml.safe_load((NLU_DIR / "config.yml").read_text())
    config["assistant_id"] = "chatbot-baseline"
    config["policies"] = [{"name": "RulePolicy"}]
    return {
        "config.yml": yaml.safe_dump(config, sort_keys=False),
        "domain.yml": yaml.safe_dump(domain, sort_keys=False, allow_unicode=True),
        "data/nlu.yml": nlu_data,
        "data/rules.yml": yaml.safe_dump(
            {"version": "3.1", "rules": rules}, sort_keys=False, allow_unicode=True
        ),
    }


def rasa_version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import rasa; print(rasa.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def ensure_model(python: str, progress: Any = print) -> tuple[Path, Path]:
    """Builds (once) the project and its trained model; returns (project dir, model file)."""
    files = project_files()
    digest = hashlib.sha256(rasa_version(python).encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    project = cache_dir() / "rasa-baseline" / digest.hexdigest()[:12]
    model = project / "models" / "baseline.tar.gz"
    if model.exists():
        return project, model
    for name, text in files.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    progress(f"training Rasa's own bot (NLU + one rule per intent) into {project} ...")
    env = {
        **os.environ,
        "RASA_TELEMETRY_ENABLED": "false",
        "RASA_CACHE_DIRECTORY": str(project / ".rasa-cache"),
    }
    subprocess.run(
        [
            python, "-m", "rasa", "train",
            "--config", "config.yml", "--domain", "domain.yml", "--data", "data",
            "--out", "models", "--fixed-model-name", "baseline",
        ],
        cwd=project,
        env=env,
        check=True,
        stdout=sys.stdout,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    if not model.exists():
        raise RuntimeError(f"rasa train did not write {model}")
    return project, model


def write_run_files(
    workdir: Path, redis_port: int, workers: int, app_secret: str
) -> tuple[Path, Path]:
    """credentials.yml (the REST channel for messages, the Messenger channel for
    receipts) and endpoints.yml (Redis lock store)."""
    credentials = workdir / "credentials.yml"
    messenger = {"verify": "bench-verify-token", "secret": app_secret, "page-access-token": "bench"}
    credentials.write_text(yaml.safe_dump({"rest": {}, "facebook": messenger}, sort_keys=False))
    endpoints: dict[str, Any] = {
        "lock_store": {"type": "redis", "url": "127.0.0.1", "port": redis_port, "db": 1}
    }
    if workers > 1:
        # Several workers only answer consistently when they share the trackers.
        endpoints["tracker_store"] = {
            "type": "redis",
            "url": "127.0.0.1",
            "port": redis_port,
            "db": 2,
        }
    path = workdir / "endpoints.yml"
    path.write_text(yaml.safe_dump(endpoints, sort_keys=False))
    return credentials, path
