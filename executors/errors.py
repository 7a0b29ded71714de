"""Errors of the executors package."""
from __future__ import annotations

from graphs.errors import HetschedError


class ExecutorError(HetschedError):
    """An executor failed to load or run a partition."""


class ExecutorStateLost(ExecutorError):
    """The executor no longer holds state an earlier call left for this one (a partition, or
    a value kept between two calls of a request group): typically the actor restarted. The
    runtime retries the request."""


class DeviceSpecError(HetschedError, ValueError):
    """A device, link or cluster specification is invalid; the message names the field."""


class ProfileError(DeviceSpecError):
    """A device profile file is malformed or incomplete; the message names the field and file."""


class DeviceUnavailableError(ExecutorError):
    """The requested real device (cuda, npu) is not present or its backend is not installed."""
