"""Error types. Each fatal error carries its exit code; the CLI catches BakeryError once and prints one line.

Exit codes (documented in the README):
    0  ok
    1  a pipeline step or gate failed (build failed, gate failed, immutable tag refused)
    2  bad input or usage (definitions, configuration, references, flags)
    3  environment: docker daemon, registry or scanner unreachable or missing
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3


class BakeryError(Exception):
    """Base class. ``str(err)`` is the one line shown to the user."""

    exit_code = EXIT_FAILED


class StepFailed(BakeryError):
    """A pipeline step failed (a build, a push, a copy)."""

    exit_code = EXIT_FAILED


class GateFailed(StepFailed):
    """A policy gate said no."""


class ImmutableTagError(StepFailed):
    """Refused to point an existing immutable tag at a different digest."""


class TagMismatch(ImmutableTagError):
    """A build tag read back (or resolved) names another digest than the ledger's reservation or the named image:
    refused, both digests in the message."""


class InputError(BakeryError):
    """Bad user input: definitions, configuration, references or flags."""

    exit_code = EXIT_INPUT


class ValidationError(InputError):
    """One or more problems in user files, each already formatted as ``FILE: FIELD: what is wrong``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class EnvironmentFailure(BakeryError):
    """Something bakery depends on is missing or unreachable (daemon, registry, scanner, tool)."""

    exit_code = EXIT_ENVIRONMENT


class AuthenticationFailed(EnvironmentFailure):
    """A registry or cloud API refused our credentials (401/403, AccessDenied): a setup problem, exit 3."""


class ToolMissing(EnvironmentFailure):
    pass


class ToolTimeout(EnvironmentFailure):
    pass


class ToolFailed(BakeryError):
    """An external tool exited non-zero. Its exit code mapping is decided by the caller."""

    def __init__(self, message: str, *, returncode: int, stderr: str = "", stdout: str = "",
                 exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        self.exit_code = exit_code


class DaemonUnavailable(EnvironmentFailure):
    pass


class RegistryUnavailable(EnvironmentFailure):
    pass


class RegistryError(StepFailed):
    """A registry answered with a permanent error (401, 403, 404, 400...)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ScannerError(EnvironmentFailure):
    """The scan could not run or its output could not be trusted. Fail closed."""
