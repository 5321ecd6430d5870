"""The numbers a user sets besides the options (``HISTOFETCH_*`` variables, ``NetConfig``
fields) and their ranges: one :class:`Range` checks a number however it was given.

A variable that is not a number, is ``nan`` or ``inf``, or is out of its range is one
:class:`~histocore.errors.UsageError` naming it (``environment variable
HISTOFETCH_TIMEOUT='1e10': give a number more than 0 and at most 86400``; the command line
prints it as one ``error:`` line, exit 1).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from histocore.errors import UsageError


@dataclass(frozen=True)
class Range:
    """``least <= x <= most`` (``open_low``: ``least < x``), finite; ``whole``: an integer."""

    least: float
    most: float
    open_low: bool = False
    whole: bool = False

    def holds(self, number: float) -> bool:
        low_ok = number > self.least if self.open_low else number >= self.least
        return (
            math.isfinite(number)
            and low_ok
            and number <= self.most
            and (not self.whole or number == int(number))
        )

    def wording(self) -> str:
        """What to give: ``a number from 0.001 to 1000``, ``a whole number from 0 to 100``,
        ``a number more than 0 and at most 86400``."""
        kind = "a whole number" if self.whole else "a number"
        least, most = (f"{int(x)}" if self.whole else f"{x:g}" for x in (self.least, self.most))
        if self.open_low:
            return f"{kind} more than {least} and at most {most}"
        return f"{kind} from {least} to {most}"


def env_number(name: str, default: float, allowed: Range) -> float:
    """The variable ``name`` as a number in ``allowed`` (an ``int`` for a whole range), or
    ``default`` when it is unset or empty; a :class:`UsageError` naming it otherwise."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not a number") from None
    if not allowed.holds(number):
        raise UsageError(f"environment variable {name}={value!r}: give {allowed.wording()}")
    return int(number) if allowed.whole else number


def url_problem(value: str) -> str | None:
    """Why ``value`` is not a service base URL (``http``/``https`` with a host, no spaces
    or control characters), or ``None``."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        return "give an http:// or https:// URL (it holds a space or a control character)"
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 -- only .port checks the port (a word, over 65535)
    except ValueError:  # a bad port, an unclosed [IPv6 bracket
        host, parts = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not host:
        return "give an http:// or https:// URL"
    return None


def env_url(name: str, default: str) -> str:
    """The variable ``name`` as a service base URL, or ``default`` when it is unset or
    empty; a :class:`UsageError` naming it otherwise (``HISTOFETCH_PMC_CLOUD_URL=garbage``
    failed every record as ``network``, retried by every run)."""
    value = os.environ.get(name)
    if not value:
        return default
    problem = url_problem(value)
    if problem:
        raise UsageError(f"environment variable {name}={value!r}: {problem}")
    return value
