"""User-facing errors: one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2


class PisError(Exception):
    """An error caused by the user's input (bad file, bad option, unknown name).

    The CLI prints ``str(error)`` on one line and exits with code 2.
    """


class ProfileError(PisError):
    """A profile file is missing, corrupted, truncated, foreign or incompatible."""


class MissingOpError(PisError):
    """A simulation needs an op the profile does not contain."""


class Unsupported(Exception):
    """An op or a model cannot run on this device or dtype (2:4 on a CPU, say).

    Not a user error: calibration records the point as ``skipped_unsupported`` and validation
    reports the configuration as skipped, and both go on.
    """


def one_line(message: object) -> str:
    """Collapse a message onto one line so scripts can grep it."""
    return " ".join(str(message).split())


def handle_errors(func: F) -> F:
    """Decorate a click command so user errors become one line on stderr and exit 2.

    Click's own usage errors keep click's formatting (also exit 2). A KeyboardInterrupt
    exits 130 quietly; anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PisError as err:
            click.echo(f"error: {one_line(err)}", err=True)
            sys.exit(EXIT_USAGE)
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            click.echo(f"error: {one_line(err.strerror or err)}{where}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
