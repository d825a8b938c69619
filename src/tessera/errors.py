"""The library's own exception types. Each message says what went wrong and what to do."""


class TesseraError(Exception):
    """Base class of every error Tessera raises on purpose."""


class ConfigError(TesseraError):
    """A configuration section is malformed (unknown key, wrong type)."""


class DataError(TesseraError):
    """A data set is missing, malformed or changed after it was versioned."""


class ImageError(DataError):
    """One image cannot be used (corrupt, truncated, too large, not an image)."""


class CheckpointError(TesseraError):
    """A checkpoint is corrupt, of another architecture or of an unknown schema."""


class ModelError(TesseraError):
    """A model cannot do what was asked (e.g. TTT-MAE on a model without a decoder)."""
