"""User-facing errors.

Every bad input ends in one of these: one clear message naming the problem and the
fix. The CLI prints the message (no traceback) and exits with status 2.
"""


class JRError(Exception):
    """Base class of errors whose message is meant for the user."""

    exit_code = 2


class ConfigError(JRError):
    """Invalid configuration value, unknown key or unknown name."""


class DataNotFoundError(JRError):
    """A dataset could not be found in any of the places tried."""


class CheckpointError(JRError):
    """A checkpoint is missing, unreadable, unsafe or does not match its architecture."""


class InputError(JRError):
    """Input tensors with the wrong shape, NaNs or pixel values outside [0, 1]."""


def unknown_name(kind: str, name: str, valid) -> ConfigError:
    """The error for an unknown registry name, listing the valid ones."""
    valid = sorted(valid)
    return ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")
