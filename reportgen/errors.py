"""The errors a user can cause, each with its documented exit code (DESIGN.md section 4)."""

from __future__ import annotations


class ReportgenError(Exception):
    """A problem the user can fix; the CLI prints the message and exits with `exit_code`."""

    exit_code = 1


class UsageError(ReportgenError):
    """Wrong command-line usage."""

    exit_code = 2


class ConfigError(ReportgenError):
    """The configuration file is invalid; the message lists every problem found."""

    exit_code = 3


class InputDataError(ReportgenError):
    """The transactions cannot be read or make no sense (missing, malformed, empty, stale)."""

    exit_code = 4


class DeliveryError(ReportgenError):
    """The report was written but could not be delivered."""

    exit_code = 5


class OutputError(ReportgenError):
    """The output folder is not writable, or the disk is full."""

    exit_code = 6


class LockedError(ReportgenError):
    """Another run holds the lock of this report."""

    exit_code = 7


EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: please report it with the log)",
    2: "usage error (bad command-line arguments)",
    3: "invalid configuration",
    4: "bad or stale input data",
    5: "delivery failed (the report files were written)",
    6: "output folder not writable, or disk full",
    7: "another run holds the lock of this report",
    130: "interrupted",
}


def counted(number: int, noun: str) -> str:
    """'1 customer', '2,000 customers': a count for a message."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"
