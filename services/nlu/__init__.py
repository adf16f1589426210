"""The NLU service: intents and entities from text, served over gRPC from a Rasa model."""
