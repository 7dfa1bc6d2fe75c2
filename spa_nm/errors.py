"""The exception hierarchy; each class carries the CLI exit code it maps to.

`spa_nm.cli.main` catches `SpaNmError`, prints ``spa-nm: error: <message>`` and returns
``exit_code``. Messages name the file (and the node when known) so one line is enough.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputError",
    "PlanMismatchError",
    "SpaNmError",
    "SurgeryError",
    "UnsupportedModelError",
    "VerificationError",
]


class SpaNmError(Exception):
    """Base class of every error spa_nm raises on purpose."""

    exit_code = 1


class InputError(SpaNmError):
    """Missing file, not an ONNX model, output path that resolves to an input, ..."""

    exit_code = 2


class ConfigError(SpaNmError):
    """A bad option value: ratio, pattern, criterion, ..."""

    exit_code = 2


class UnsupportedModelError(SpaNmError):
    """A model that loads but that spa_nm cannot handle."""


class PlanMismatchError(SpaNmError):
    """A prune plan applied to a model it was not made for."""


class SurgeryError(SpaNmError):
    """Surgery produced a model that fails its own post-conditions (a rule bug)."""


class VerificationError(SpaNmError):
    """Two models disagree beyond the tolerance."""
