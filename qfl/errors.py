"""One hierarchy for every error qfl raises on purpose.

Callers catch `QflError` to tell a qfl failure (bad config, missing data file,
rejected update) from a bug; each subclass names the part that failed.
"""

from __future__ import annotations


class QflError(Exception):
    """Base of every error qfl raises deliberately."""


class ConfigError(QflError):
    """A configuration file or override is invalid; raised before any work starts."""


class DataError(QflError):
    """A dataset cannot be loaded or partitioned as configured."""


class TrainingError(QflError):
    """Local training or aggregation cannot proceed (e.g. no client update arrived)."""


class RunError(QflError):
    """A run cannot start or resume (missing checkpoint, unknown run id)."""


class QuantumError(QflError):
    """A circuit or executor cannot do what was asked (unsupported gate, bad shapes)."""


class QuantumResourceUnavailable(QuantumError):
    """A quantum resource (simulator backend, IBM device) is missing or failed."""
