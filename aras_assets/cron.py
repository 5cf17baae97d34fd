"""Five-field cron expressions: parse one, test whether a minute matches it, find the next minute that does.

Fields are minute, hour, day of month, month, day of week (0-7, 0 and 7 both Sunday). Each is `*`,
a number, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, or a comma list of these; months and
weekdays may also be named (`jan`, `mon`). `@hourly`, `@daily`, `@weekly`, `@monthly` and `@yearly`
are accepted. As in cron, when both day fields are restricted a day matches either of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
          "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                      "dec"), 1)}
WEEKDAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, lowest, highest, names) per field.
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, MONTHS),
          ("day of week", 0, 7, WEEKDAYS))
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most each month can have
# Every date/weekday combination recurs within 28 years, so a search that long finds any match.
MAX_SEARCH_DAYS = 366 * 28


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool  # the day-of-month field does not start with `*`
    weekdays_restricted: bool

    def day_matches(self, t: datetime) -> bool:
        if t.month not in self.months:
            return False
        dom, dow = t.day in self.days, (t.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def matches(self, t: datetime) -> bool:
        """Whether the minute of `t` (in its own time zone) is one the expression names."""
        return t.minute in self.minutes and t.hour in self.hours and self.day_matches(t)

    def next_after(self, t: datetime) -> datetime | None:
        """The first matching minute after `t`, in `t`'s time zone (None only if no date ever matches)."""
        start = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        day = start.replace(hour=0, minute=0)
        for _ in range(MAX_SEARCH_DAYS):
            if self.day_matches(day):
                for h in hours:
                    for m in minutes:
                        candidate = day.replace(hour=h, minute=m)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        return None


def _parse_value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    value = names.get(text.lower()) if names else None
    if value is None:
        if not text.isdigit():
            raise ValueError(f"{field} {text!r} is not a number")
        value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{field} {value} is outside {low}-{high}")
    return value


def _parse_field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{field} step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _parse_value(a, field, low, high, names), _parse_value(b, field, low, high, names)
            if first > last:
                raise ValueError(f"{field} range {span!r} runs backwards")
        else:
            first = _parse_value(span, field, low, high, names)
            last = high if step_text else first  # `a/n`: from a to the end of the field
        values.update(range(first, last + 1, step))
    return values


def parse_cron(expression: str) -> Cron:
    """A `Cron` for the expression; ValueError naming the bad field otherwise, or when no date matches
    (`0 0 30 2 *`: a cron that never fires is a mistake)."""
    text = MACROS.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) != len(FIELDS):
        raise ValueError(f"cron {expression!r} must have 5 fields (minute hour day-of-month month day-of-week), "
                         f"not {len(parts)}")
    try:
        minutes, hours, days, months, weekdays = (_parse_field(p, *f) for p, f in zip(parts, FIELDS, strict=True))
    except ValueError as exc:
        raise ValueError(f"cron {expression!r}: {exc}") from None
    weekdays = {d % 7 for d in weekdays}  # 7 is Sunday too
    days_restricted, weekdays_restricted = not parts[2].startswith("*"), not parts[4].startswith("*")
    either = days_restricted and weekdays_restricted  # then any listed weekday of a listed month matches
    if not either and not any(d <= MONTH_DAYS[m - 1] for m in months for d in days):
        raise ValueError(f"cron {expression!r} names no date that exists (day of month past the end of its months)")
    return Cron(expression, frozenset(minutes), frozenset(hours), frozenset(days), frozenset(months),
                frozenset(weekdays), days_restricted, weekdays_restricted)
