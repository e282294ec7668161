"""cloudmig's exceptions: one base class, one tree.

    try:
        engine.migrate(...)
    except errors.MigrationError as exc:
        print(exc)          # a sentence that names the problem and the fix

The tree::

    CloudmigError
    ├── ConfigError            bad input: unknown names, malformed options, missing files
    ├── HostSetupError         this machine or a host lacks something (CRIU, runc, ...)
    ├── ProviderError          creating, describing or destroying hosts
    ├── NetworkError           tunnels, routes, addresses, the endpoint proxy
    ├── ContainerError         containers: images, runc
    │   └── ContainerExited    it ended right after it started (kept for `cloudmig logs`)
    ├── MigrationError
    │   ├── PreflightError     refused before anything was changed
    │   ├── CheckpointError
    │   ├── RestoreError
    │   └── LazyPagesError
    ├── AgentError             the controller <-> agent channel
    │   ├── AuthError
    │   ├── ProtocolError
    │   └── RemoteCallError    an exception raised inside an agent (keeps its traceback)
    └── PlanError

Every error has an ``exit_code`` the CLI exits with; the message is what the user sees.
"""

from __future__ import annotations

__all__ = [
    "CloudmigError", "ConfigError", "HostSetupError", "ProviderError", "NetworkError",
    "ContainerError", "ContainerExited", "MigrationError", "PreflightError", "CheckpointError", "RestoreError",
    "LazyPagesError", "AgentError", "AuthError", "ProtocolError", "RemoteCallError",
    "PlanError", "by_name",
]


class CloudmigError(Exception):
    """Base of every error cloudmig raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class ConfigError(CloudmigError):
    """Bad input: refused before anything changed."""

    exit_code = 2


class HostSetupError(CloudmigError):
    exit_code = 3


class ProviderError(CloudmigError):
    exit_code = 4

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code  # the cloud's own error code, kept


class NetworkError(CloudmigError):
    exit_code = 5


class ContainerError(CloudmigError):
    exit_code = 6


class ContainerExited(ContainerError):
    """The container's command ended right after it started; its bundle (and output) stay."""


class MigrationError(CloudmigError):
    exit_code = 7


class PreflightError(MigrationError):
    exit_code = 2


class CheckpointError(MigrationError):
    pass


class RestoreError(MigrationError):
    pass


class LazyPagesError(MigrationError):
    pass


class AgentError(CloudmigError):
    exit_code = 8


class AgentLost(AgentError):
    """The channel to an agent broke, or the agent cannot be reached (it may have died)."""


class MigrationLost(MigrationError):
    """After the resume, the container's memory could no longer arrive: the destination's
    copy was stopped (and the source's taken back where it still could be)."""
    exit_code = 9


class AuthError(AgentError):
    pass


class ProtocolError(AgentError):
    pass


class RemoteCallError(AgentError):
    """An exception raised inside an agent, carried back with its type and traceback."""

    def __init__(self, message: str, *, remote_type: str, remote_traceback: str = "",
                 host: str | None = None) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.host = host


class PlanError(CloudmigError):
    exit_code = 2


def by_name(name: str) -> type[CloudmigError] | None:
    """The cloudmig error class called ``name``, for errors that crossed the agent channel."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, CloudmigError):
        return cls
    return None
