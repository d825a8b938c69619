"""Placeholder: replaced by the module's owner."""


def embed_cli() -> None:
    """Not built yet."""
    raise SystemExit("not built yet")


def predict_cli() -> None:
    """Not built yet."""
    raise SystemExit("not built yet")
