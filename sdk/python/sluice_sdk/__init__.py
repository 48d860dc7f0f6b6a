"""Write Sluice plugins in Python: tasks that run as WebAssembly components
(componentize-py), whose only way out is HTTP through their gate.

A plugin is one function ``run(ctx, input)`` that returns the output, or raises
:class:`Retry` or :class:`Fail`. :func:`plugin` makes it the component's
export::

    from sluice_sdk import plugin, http, log, Retry, Fail

    def run(ctx, input):
        apps = http.get_json(f"{input['api']}/apps")   # 5xx or timeout: retry; 404: fail
        log.info("%d apps", len(apps))
        return {"apps": len(apps)}

    Handler = plugin(run)

- ``ctx`` (:class:`Context`): ``task_id``, ``gate``, ``attempt``,
  ``scheduled_at``, ``deadline``, ``remaining()``, ``idempotency_key``,
  ``schedule``, and ``next(task)`` for tasks created with the success.
- :mod:`sluice_sdk.http`: requests through the gate; an :class:`HttpError`
  that escapes ``run`` retries or fails as Sluice decides for a webhook.
- :mod:`sluice_sdk.log`: lines for the attempt's history.
- :func:`decode`, :func:`parse_duration`, ...: input into dataclasses, times.

Import every module a plugin uses at the top of its files: a component has no
standard library to import from at run time, only what was imported when it
was built.
"""

from . import http, log
from ._glue import plugin, to_json
from .context import Context
from .decode import DecodeError, decode
from .http import HttpError, Request, Response
from .outcome import Fail, Retry
from .timeutil import format_duration, format_timestamp, parse_duration, parse_timestamp

__all__ = [
    "plugin",
    "http",
    "log",
    "Retry",
    "Fail",
    "Context",
    "HttpError",
    "Request",
    "Response",
    "decode",
    "DecodeError",
    "to_json",
    "parse_duration",
    "format_duration",
    "parse_timestamp",
    "format_timestamp",
]

__version__ = "0.1.0"
