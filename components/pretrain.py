"""Placeholder: replaced by the module's owner."""


def cli() -> None:
    """Not built yet."""
    raise SystemExit("not built yet")
