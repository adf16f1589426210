"""Training NLU models, cached by content.

A model's version is a hash of everything that shapes it: the pipeline
config, the training data and the Rasa version. A model of that version in the
models directory is reused; otherwise one is trained and stored beside a small
JSON file describing it (language, pipeline, intents, entities, train time).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mesh import cache_dir, get_logger, repo_root

_log = get_logger("nlu.training")

DEFAULT_CONFIG = repo_root() / "services" / "nlu" / "config.yml"
DEFAULT_DATA = repo_root() / "services" / "nlu" / "data"
FALLBACK_INTENT = "nlu_fallback"


def default_models_dir() -> Path:
    explicit = os.environ.get("NLU_MODELS_DIR")
    return Path(explicit).expanduser() if explicit else cache_dir() / "nlu-models"


def _rasa_version() -> str:
    try:
        from importlib.metadata import version

        return version("rasa")
    except Exception:
        return "unknown"


def model_version(config: Path, data: Path) -> str:
    """The content hash that names a model trained from ``config`` and ``data``."""
    digest = hashlib.sha256()
    digest.update(f"rasa={_rasa_version()}\n".encode())
    digest.update(b"config\n" + config.read_bytes())
    files = sorted(p for p in data.rglob("*") if p.is_file()) if data.is_dir() else [data]
    for path in files:
        name = path.relative_to(data) if data.is_dir() else Path(path.name)
        digest.update(f"\n--{name}\n".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelMetadata:
    """What a stored model is, written beside it as ``<model>.json``."""

    version: str
    language: str
    pipeline: list[str]
    fallback_threshold: float
    fallback_intent: str
    intents: list[str]
    entities: list[str]
    train_time: float

    @classmethod
    def read(cls, model_path: Path) -> ModelMetadata | None:
        sidecar = model_path.with_suffix("").with_suffix(".json")
        if not sidecar.exists():
            return None
        raw: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
        return cls(**raw)

    def write(self, model_path: Path) -> None:
        sidecar = model_path.with_suffix("").with_suffix(".json")
        sidecar.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")


def model_path_for(version: str, models_dir: Path) -> Path:
    return models_dir / f"nlu-{version}.tar.gz"


def describe_config(config: Path) -> tuple[str, list[str], float]:
    """Language, component names and fallback threshold of a pipeline config."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    pipeline = [str(step.get("name")) for step in raw.get("pipeline") or []]
    threshold = 0.0
    for step in raw.get("pipeline") or []:
        if step.get("name") == "FallbackClassifier":
            threshold = float(step.get("threshold", 0.3))
    return str(raw.get("language", "en")), pipeline, threshold


def _training_labels(data: Path) -> tuple[list[str], list[str]]:
    from rasa.shared.nlu.training_data.loading import load_data

    training = load_data(str(data))
    return sorted(training.intents), sorted(training.entities)


def ensure_model(
    config: Path = DEFAULT_CONFIG,
    data: Path = DEFAULT_DATA,
    models_dir: Path | None = None,
    *,
    force: bool = False,
) -> Path:
    """Returns the model for ``config`` and ``data``, training it when missing."""
    models_dir = models_dir or default_models_dir()
    version = model_version(config, data)
    target = model_path_for(version, models_dir)
    if target.exists() and not force:
        print(f"NLU model {version} is up to date: {target}", flush=True)
        return target

    models_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    # Rasa's own training cache lives beside the models, not in the checkout.
    os.environ.setdefault("RASA_CACHE_DIRECTORY", str(cache_dir() / "rasa-cache"))
    print(f"Training NLU model {version} from {data} (about a minute)...", flush=True)
    started = time.monotonic()

    from rasa.model_training import train_nlu

    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".training-") as scratch:
        produced = train_nlu(
            config=str(config),
            nlu_data=str(data),
            output=scratch,
            fixed_model_name=f"nlu-{version}",
        )
        if not produced:
            raise RuntimeError(f"Rasa produced no model from {data}")
        language, pipeline, threshold = describe_config(config)
        intents, entities = _training_labels(data)
        meta = ModelMetadata(
            version=version,
            language=language,
            pipeline=pipeline,
            fallback_threshold=threshold,
            fallback_intent=FALLBACK_INTENT,
            intents=intents,
            entities=entities,
            train_time=time.time(),
        )
        meta.write(target)
        # Rename last: a model file present means a complete model.
        shutil.move(produced, target)
    print(f"Trained NLU model {version} in {time.monotonic() - started:.0f}s: {target}", flush=True)
    return target
