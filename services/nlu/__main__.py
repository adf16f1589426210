"""python -m services.nlu: serve, train or evaluate the NLU service."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from pathlib import Path

from mesh import bootstrap

DESCRIPTION = "The NLU service: intents and entities from text, from a Rasa model."


def _serve(args: argparse.Namespace) -> int:
    from mesh.tenants import Tenants
    from services.nlu.server import NluSettings, serve

    asyncio.run(serve(NluSettings.from_env(), Tenants.from_env()))
    return 0


def _model_inputs(parser: argparse.ArgumentParser) -> None:
    from services.nlu.training import DEFAULT_CONFIG, DEFAULT_DATA

    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training data")
    parser.add_argument("--models-dir", type=Path, help="where models are kept")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _model_inputs(parser)
    parser.add_argument("--force", action="store_true", help="retrain even if up to date")


def _train(args: argparse.Namespace) -> int:
    from services.nlu.training import ensure_model

    ensure_model(args.config, args.data, args.models_dir, force=args.force)
    return 0


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _model_inputs(parser)
    parser.add_argument("--heldout", type=Path, help="held-out Rasa NLU YAML")
    parser.add_argument("--min-intent-accuracy", type=float, default=0.85)
    parser.add_argument("--min-entity-f1", type=float, default=0.8)


def _evaluate(args: argparse.Namespace) -> int:
    from services.nlu.evaluate import run_evaluation

    return run_evaluation(args)


COMMANDS = [
    bootstrap.Command(
        "serve",
        help="serve chatbot.nlu.v1.NluService over gRPC",
        description="Serve on GRPC_HOST:NLU_PORT (127.0.0.1:50052) with health and "
        "reflection; /metrics on METRICS_PORT (9052). The model is NLU_MODEL, or the one "
        "trained from the repository's data. Tenants come from TENANTS_FILE or TENANT_ID.",
        run=_serve,
        traces=True,
    ),
    bootstrap.Command(
        "train",
        help="train the model if its data or config changed",
        description="Train a model from CONFIG and DATA into the models directory "
        "(NLU_MODELS_DIR, or the shared cache). Models are named by a hash of their "
        "inputs: an unchanged model is not retrained.",
        run=_train,
        arguments=_train_arguments,
    ),
    bootstrap.Command(
        "evaluate",
        help="score the model on held-out examples",
        description="Parse held-out examples with the trained model and print intent "
        "accuracy and entity precision, recall and F1; exit 1 below the floors.",
        run=_evaluate,
        arguments=_evaluate_arguments,
    ),
]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    # TensorFlow's C++ info lines and the dependencies' deprecation warnings
    # drown the service's own log; LOG_LEVEL=DEBUG brings them back.
    if os.environ.get("LOG_LEVEL", "").upper() != "DEBUG":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    return bootstrap.main("nlu", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
