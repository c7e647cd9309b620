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


class DataFileError(DataNotFoundError):
    """A data file was found but cannot be read (truncated, corrupt, another format): an
    error even where a missing file has a fallback (the bundled MNIST slice), since the user
    pointed at it."""


class CheckpointError(JRError):
    """A checkpoint is missing, unreadable, unsafe or does not match its architecture."""


class InputError(JRError):
    """Input tensors with the wrong shape, NaNs or pixel values outside [0, 1]."""


def unknown_name(kind: str, name: str, valid) -> ConfigError:
    """The error for an unknown registry name, listing the valid ones."""
    valid = sorted(valid)
    return ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error as one line: the problem and where (PyYAML's own message spans lines)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    text = " ".join(str(problem if problem else exc).split())
    if "python/" in text or "constructor for the tag" in text:
        text += " (files are read with yaml.safe_load: Python tags such as !!python/object are refused)"
    return f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else text
