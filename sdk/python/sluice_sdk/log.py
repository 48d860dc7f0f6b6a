"""Lines for the attempt's history, through the world's ``log`` import.

``log.info("hibernated %s", app_id)`` (or an f-string). The host keeps the
lines with the attempt and caps them (line length and total per attempt); past
the cap lines are dropped and the history says how many. Logging never fails
and never blocks. ``print`` goes nowhere in a plugin: stdout is discarded.

Outside a component (tests) lines go to stderr, or to the sink that
:func:`set_sink` installed.
"""

from __future__ import annotations

import sys
from typing import Callable

__all__ = ["trace", "debug", "info", "warn", "warning", "error", "write", "set_sink", "LEVELS"]

#: The levels, least important first.
LEVELS = ("trace", "debug", "info", "warn", "error")

Sink = Callable[[str, str], None]


def _stderr(level: str, message: str) -> None:
    sys.stderr.write(f"{level}: {message}\n")


_sink: Sink = _stderr


def set_sink(sink: Sink) -> Sink:
    """Sends lines to ``sink(level, message)`` instead; returns the previous
    sink. Inside a component the SDK sets it to the ``log`` import."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def write(level: str, message: object, *args: object) -> None:
    """Appends one line at ``level`` (one of :data:`LEVELS`); with ``args``,
    ``message % args`` as in the standard ``logging`` module."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LEVELS)}")
    text = str(message)
    if args:
        try:
            text = text % args
        except (TypeError, ValueError):
            text = " ".join([text, *map(str, args)])
    _sink(level, text)


def trace(message: object, *args: object) -> None:
    """Step-by-step detail."""
    write("trace", message, *args)


def debug(message: object, *args: object) -> None:
    """Detail for whoever debugs the plugin."""
    write("debug", message, *args)


def info(message: object, *args: object) -> None:
    """What the plugin did."""
    write("info", message, *args)


def warn(message: object, *args: object) -> None:
    """Something odd that did not stop it."""
    write("warn", message, *args)


warning = warn


def error(message: object, *args: object) -> None:
    """Something that went wrong."""
    write("error", message, *args)
