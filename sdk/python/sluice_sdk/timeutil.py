"""Times and durations as Sluice and the Rust SDK spell them.

- Durations in task input (``"24h"``, ``"90m"``, ``"1h 30m"``, ``"PT24H"``) parse
  into a :class:`datetime.timedelta`, as jiff's ``SignedDuration`` does in the
  Rust examples: hours and smaller units only, since days vary in length.
- :func:`format_duration` prints one as ISO 8601 (``PT1H30M``), as jiff does.
- Timestamps are RFC 3339 with an offset (``2026-12-01T00:00:00Z``);
  :func:`format_timestamp` prints one in UTC with ``Z``.
- ``Retry-After`` holds seconds or an HTTP date (:func:`parse_http_date`).

Pure Python; the standard library modules used are imported here, at the top,
because a component has no standard library to import from at run time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = [
    "parse_duration",
    "format_duration",
    "parse_timestamp",
    "format_timestamp",
    "parse_http_date",
]

_UNITS: dict[str, int] = {}
for _names, _unit_micros in (
    (("h", "hr", "hrs", "hour", "hours"), 3_600_000_000),
    (("m", "min", "mins", "minute", "minutes"), 60_000_000),
    (("s", "sec", "secs", "second", "seconds"), 1_000_000),
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 1_000),
    (("us", "\u00b5s", "usec", "usecs", "microsecond", "microseconds"), 1),
):
    for _name in _names:
        _UNITS[_name] = _unit_micros
_CALENDAR_UNITS = (
    "y", "yr", "yrs", "year", "years", "mo", "mos", "month", "months",
    "w", "wk", "wks", "week", "weeks", "d", "day", "days",
)

_LONG_FRACTION = re.compile(r"\.(\d{7,})")
_FRIENDLY_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z\u00b5]+)\s*,?")
_ISO = re.compile(
    r"P(?:(?P<days>\d+)D)?(?:T(?:(?P<h>\d+(?:[.,]\d+)?)H)?(?:(?P<m>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<s>\d+(?:[.,]\d+)?)S)?)?",
    re.IGNORECASE,
)


def _micros(number: str, unit_micros: int) -> int:
    whole, _, fraction = number.replace(",", ".").partition(".")
    micros = int(whole) * unit_micros
    if fraction:
        micros += int(fraction.ljust(12, "0")[:12]) * unit_micros // 10**12
    return micros


def parse_duration(text: str) -> timedelta:
    """A duration in hours or smaller units, friendly or ISO 8601.

    Accepts ``"24h"``, ``"90m"``, ``"1h 30m"``, ``"1 hour, 30 minutes"``,
    ``"1.5s"``, ``"250ms"``, ``"-5m"``, ``"5m ago"`` (negative) and ``"PT1H30M"``.
    Only the last unit may have a fraction. Days, weeks, months and years are
    refused: their length varies. Raises :class:`ValueError` naming the problem.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string, got {text!r}")
    raw = text.strip()
    sign = 1
    if raw and raw[0] in "+-":
        sign = -1 if raw[0] == "-" else 1
        raw = raw[1:].lstrip()
    if not raw:
        raise ValueError(f"invalid duration {text!r}: it is empty")
    if raw[:1] in "Pp":
        match = _ISO.fullmatch(raw)
        if match is None or raw.upper() in ("P", "PT") or raw.upper().endswith("T"):
            raise ValueError(
                f"invalid duration {text!r}: expected ISO 8601 like PT1H30M, "
                "in hours, minutes and seconds"
            )
        if match["days"] is not None:
            raise ValueError(
                f"invalid duration {text!r}: days are not allowed, since their "
                "length varies; use hours (PT24H)"
            )
        parts = [(match[key], unit) for key, unit in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000))]
        present = [(n, u) for n, u in parts if n is not None]
        for number, _ in present[:-1]:
            if "." in number or "," in number:
                raise ValueError(f"invalid duration {text!r}: only the last unit may have a fraction")
        return timedelta(microseconds=sign * sum(_micros(n, u) for n, u in present))
    if raw.lower().endswith(" ago"):
        sign = -sign
        raw = raw[: -len(" ago")].rstrip()
    position, total, fractional_seen = 0, 0, False
    while position < len(raw):
        match = _FRIENDLY_PART.match(raw, position)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: expected units like \"24h\", \"90m\" "
                "or \"1h 30m\""
            )
        number, unit = match.group(1), match.group(2)
        if fractional_seen:
            raise ValueError(f"invalid duration {text!r}: only the last unit may have a fraction")
        fractional_seen = "." in number
        key = unit if unit in _UNITS else unit.lower()
        if key not in _UNITS:
            if key in _CALENDAR_UNITS:
                raise ValueError(
                    f"invalid duration {text!r}: {unit!r} is not allowed, since its "
                    "length varies; use hours (\"24h\")"
                )
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r}")
        total += _micros(number, _UNITS[key])
        position = match.end()
    return timedelta(microseconds=sign * total)


def format_duration(duration: timedelta) -> str:
    """ISO 8601, as jiff prints a ``SignedDuration``: ``PT24H``, ``PT1H30M``,
    ``PT1.5S``, ``PT0S``, ``-PT5M``."""
    micros = (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    secs, sub = divmod(micros, 1_000_000)
    out = "PT"
    if secs >= 60:
        hours, secs = divmod(secs, 3600)
        minutes, secs = divmod(secs, 60)
        if hours:
            out += f"{hours}H"
        if minutes:
            out += f"{minutes}M"
        if secs or sub:
            out += f"{secs}{_fraction(sub)}S"
    else:
        out += f"{secs}{_fraction(sub)}S"
    return sign + out


def _fraction(micros: int) -> str:
    return f".{micros:06d}".rstrip("0") if micros else ""


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware :class:`datetime` in UTC.
    Digits past microseconds are dropped. Raises :class:`ValueError`."""
    if not isinstance(text, str):
        raise ValueError(f"expected a timestamp string, got {text!r}")
    raw = text.strip()
    if len(raw) > 10 and raw[10] in "tT ":
        raw = raw[:10] + "T" + raw[11:]
    if raw[-1:] in ("z", "Z"):
        raw = raw[:-1] + "+00:00"
    fraction = _LONG_FRACTION.search(raw)
    if fraction:
        raw = raw[: fraction.start() + 7] + raw[fraction.end():]
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"invalid timestamp {text!r}: expected RFC 3339, like 2026-12-01T00:00:00Z") from None
    if at.tzinfo is None:
        raise ValueError(f"invalid timestamp {text!r}: it needs an offset, such as Z or +01:00")
    return at.astimezone(timezone.utc)


def format_timestamp(at: datetime) -> str:
    """RFC 3339 in UTC with ``Z``, fractional seconds only as needed."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    at = at.astimezone(timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(at.microsecond) + "Z"


_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_IMF = re.compile(r"[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT")
_RFC850 = re.compile(r"[A-Za-z]+, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT")
_ASCTIME = re.compile(r"[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})")


def parse_http_date(text: str) -> datetime | None:
    """An HTTP date (IMF-fixdate, RFC 850 or asctime), or ``None``."""
    raw = text.strip()
    try:
        if match := _IMF.fullmatch(raw):
            day, month, year, h, m, s = match.groups()
        elif match := _RFC850.fullmatch(raw):
            day, month, year2, h, m, s = match.groups()
            year = str(2000 + int(year2) if int(year2) < 70 else 1900 + int(year2))
        elif match := _ASCTIME.fullmatch(raw):
            month, day, h, m, s, year = match.groups()
        else:
            return None
        return datetime(int(year), _MONTHS[month.lower()], int(day), int(h), int(m), int(s), tzinfo=timezone.utc)
    except (KeyError, ValueError):
        return None
