"""Errors the launcher reports as one line and a non-zero exit status, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix: a bad config, a missing data set or checkpoint."""


class ConfigError(UserError):
    """A config key, value or name is invalid."""


class DataError(UserError):
    """A data set is unknown, not prepared, or unreadable."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not match the config."""


def choose(kind: str, name: str, choices) -> None:
    """Raise ConfigError unless `name` is one of `choices`, listing the valid names."""
    if name not in choices:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(choices))}")
