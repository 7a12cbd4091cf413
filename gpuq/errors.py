"""gpuq's domain errors.

Every error a user can see is a :class:`GpuqError` whose message is one clear
sentence saying what is wrong and what to do.  Foreign exceptions are wrapped
where they enter gpuq (``raise StoreUnavailable(...) from e``).
"""

from __future__ import annotations


class GpuqError(Exception):
    """Base class: ``str(err)`` is the sentence shown to the user."""

    #: HTTP status the daemon's API answers with for this error.
    http_status = 400
    #: Exit status of the CLI for this error.
    exit_code = 1


class InvalidInput(GpuqError):
    """The user gave something malformed (a size, a duration, an option)."""


class JobNotFound(GpuqError):
    http_status = 404


class PermissionDenied(GpuqError):
    http_status = 403


class WouldNeverFit(GpuqError):
    """The request could never run on any node of this cluster."""

    http_status = 422


class IllegalTransition(GpuqError):
    """A state change that the job's current state does not allow."""

    http_status = 409


class StoreUnavailable(GpuqError):
    """Redis could not be reached or answered with an error."""

    http_status = 503


class RecordSetAside(GpuqError):
    """A stored job record could not be read; it was moved aside with its evidence."""

    http_status = 410


class StateDirectoryFull(GpuqError):
    """The daemon's state directory is nearly full: new submissions wait until space returns."""

    http_status = 507


class DaemonBusy(GpuqError):
    """The daemon refused a connection (too many at once, or too many from this user)."""

    http_status = 503


class DaemonNotRunning(GpuqError):
    exit_code = 2


class NoGpuInventory(GpuqError):
    """Neither NVML nor a simulated inventory is available."""


class ConfigError(GpuqError):
    """The configuration file or environment is invalid."""


class SubmitLimitExceeded(PermissionDenied):
    """A user already has the most pending jobs the scheduler allows."""

    http_status = 429


class MemoryConfigTooLate(GpuqError):
    """GPU memory settings were applied after TensorFlow had already initialised its devices."""


class CheckpointError(GpuqError):
    """A checkpoint could not be written, or does not match the model that tries to restore it."""
