"""User-facing errors and the command-line wrapper that reports them.

Every error a user can cause -- a bad option or config value, a missing or
unreadable file, a checkpoint that is truncated or unsafe, an untrusted
native-code model -- is a :class:`SemimoeError` whose message names the file
or option and says what was expected. The command-line entry points turn
them into one ``error: ...`` line and exit status 2 (:func:`run_cli`);
tracebacks are for bugs, and ``--debug`` shows them for user errors too.
"""
from __future__ import annotations

import math
import sys
from typing import Callable, List, Optional, Sequence

__all__ = ["SemimoeError", "ConfigError", "DataError", "CheckpointError", "UntrustedModelError", "UsageError",
           "describe", "check_range", "run_cli"]


class SemimoeError(Exception):
    """An error the user can fix; the message names the file or option."""


class ConfigError(SemimoeError, ValueError):
    """A bad configuration key or value (the message names the key)."""


class DataError(SemimoeError, ValueError):
    """Bad or missing data; the message names the file or folder."""


class CheckpointError(SemimoeError, ValueError):
    """A model file that is missing, truncated, of the wrong kind or unsafe to load."""


class UntrustedModelError(SemimoeError):
    """A model file that holds native code and has not been trusted (docs/DEPLOY.md)."""


class UsageError(SemimoeError, ValueError):
    """A bad command-line option or argument value."""


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``, never an empty text."""
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def check_range(name: str, value, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                error: type = None) -> None:
    """Raise ``error`` (default :class:`UsageError`) naming ``name`` unless
    ``value`` is a finite number within the bounds."""
    error = error or UsageError
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    bad = ((lo is not None and (value <= lo if lo_open else value < lo)) or
           (hi is not None and (value >= hi if hi_open else value > hi)))
    if bad:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
        raise error(f"{name} must be {' and '.join(s for s in (lo_s, hi_s) if s)}, got {value!r}")


def run_cli(main: Callable[[List[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a :class:`SemimoeError` becomes one ``error: ...`` line
    on stderr and exit status 2 (``--debug`` in ``argv``: re-raised with its
    traceback). Other exceptions are bugs and keep their traceback."""
    import warnings

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args = [a for a in args if a != "--debug"]
    formatwarning = warnings.formatwarning
    if not debug:  # warnings as one "warning: ..." line each, like the errors
        warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    try:
        return main(args)
    except SemimoeError as e:
        if debug:
            raise
        print(f"error: {str(e).strip() or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning
