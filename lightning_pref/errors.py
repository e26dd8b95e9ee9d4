"""User-facing errors: the CLI prints these as one line (``error: ...``) without a traceback."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "LightningPrefError",
    "ModelLoadError",
    "TrainingDivergedError",
    "first_line",
    "user_error",
]


class LightningPrefError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class ModelLoadError(LightningPrefError):
    """A model folder or hub id could not be loaded (missing files, no network, wrong layout)."""


class DataError(LightningPrefError):
    """A data source is missing or does not have the expected schema."""


class ConfigError(LightningPrefError):
    """A configuration value is inconsistent with the rest of the setup."""


class TrainingDivergedError(LightningPrefError):
    """The loss became NaN or infinite; the run stops with the step and a suggestion."""


def user_error(err: BaseException) -> LightningPrefError | None:
    """The LightningPrefError behind ``err`` (jsonargparse and Lightning wrap what they catch)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, LightningPrefError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``: a library error quoted in our one-line errors."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
