"""Errors the launcher reports as one line and a non-zero exit status, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix: a bad config, a missing data set or checkpoint. The launcher
    prints it as one line and exits with `exit_code`."""

    exit_code = 2


class ConfigError(UserError):
    """A config key, value or name is invalid."""


class DataError(UserError):
    """A data set is unknown, not prepared, or unreadable."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not match the config."""


class TrainingDiverged(UserError):
    """The loss or gradient norm became non-finite; the last checkpoint is kept as it was."""

    exit_code = 1


def choose(kind: str, name: str, choices) -> None:
    """Raise ConfigError unless `name` is one of `choices`, listing the valid names."""
    if name not in choices:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(choices))}")
