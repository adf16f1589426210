"""python -m services.nlu: serve, train or evaluate the NLU service."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from pathlib import Path

from mesh import ConfigError, configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.nlu",
        description="The NLU service: intents and entities from text, from a Rasa model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "serve",
        help="serve chatbot.nlu.v1.NluService over gRPC",
        description="Serve on GRPC_HOST:NLU_PORT (127.0.0.1:50052) with health and "
        "reflection; /metrics on METRICS_PORT (9052). The model is NLU_MODEL, or the one "
        "trained from the repository's data. Tenants come from TENANTS_FILE or TENANT_ID.",
    )

    train = commands.add_parser(
        "train",
        help="train the model if its data or config changed",
        description="Train a model from CONFIG and DATA into the models directory "
        "(NLU_MODELS_DIR, or the shared cache). Models are named by a hash of their "
        "inputs: an unchanged model is not retrained.",
    )
    _add_model_inputs(train)
    train.add_argument("--force", action="store_true", help="retrain even if up to date")

    evaluate = commands.add_parser(
        "evaluate",
        help="score the model on held-out examples",
        description="Parse held-out examples with the trained model and print intent "
        "accuracy and entity precision, recall and F1; exit 1 below the floors.",
    )
    _add_model_inputs(evaluate)
    evaluate.add_argument("--heldout", type=Path, help="held-out Rasa NLU YAML")
    evaluate.add_argument("--min-intent-accuracy", type=float, default=0.85)
    evaluate.add_argument("--min-entity-f1", type=float, default=0.8)
    return parser


def _add_model_inputs(parser: argparse.ArgumentParser) -> None:
    from services.nlu.training import DEFAULT_CONFIG, DEFAULT_DATA

    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training data")
    parser.add_argument("--models-dir", type=Path, help="where models are kept")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    # TensorFlow's C++ info lines and the dependencies' deprecation warnings
    # drown the service's own log; LOG_LEVEL=DEBUG brings them back.
    if os.environ.get("LOG_LEVEL", "").upper() != "DEBUG":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    try:
        if args.command == "serve":
            configure_logging("nlu")
            from mesh.tenants import Tenants
            from mesh.tracing import setup_tracing, shutdown_tracing
            from services.nlu.server import NluSettings, serve

            setup_tracing("nlu")
            try:
                asyncio.run(serve(NluSettings.from_env(), Tenants.from_env()))
            finally:
                shutdown_tracing()
            return 0
        if args.command == "train":
            from services.nlu.training import ensure_model

            ensure_model(args.config, args.data, args.models_dir, force=args.force)
            return 0
        if args.command == "evaluate":
            from services.nlu.evaluate import run_evaluation

            return run_evaluation(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
