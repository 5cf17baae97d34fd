"""The error taxonomy: every stage raises one of two errors for what it expects.

- `BadInputError`: the input is wrong (a missing or corrupt file, an unknown tile or id, an
  invalid setting). Retrying cannot help: the step fails once, and the message names the
  file, tile or id and what to do.
- `TransientError`: the world is briefly unwell (a network read, an endpoint that is down or
  slow, a busy database). The step retries itself with exponential backoff for up to
  `retry_window_s` seconds (`step_errors`), the same under `aras run`, the CLI and the UI.

Anything else is a bug and surfaces with its traceback. Plain functions raise these without
importing Dagster; `step_errors` is the one place that turns them into Dagster's outcomes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class BadInputError(Exception):
    """The input is wrong: fail once, with a message that says what and where."""


class TransientError(Exception):
    """A failure that may pass: retry with backoff."""


def backoff_schedule(window_s: float, first_s: float = 1.0, cap_s: float = 30.0) -> list[float]:
    """Waits before each retry: doubling from `first_s`, each at most `cap_s`, until together
    they cover `window_s` (so a step keeps trying for about that long, and then gives up)."""
    waits: list[float] = []
    wait = first_s
    while window_s > 0 and sum(waits) < window_s:
        waits.append(min(wait, cap_s))
        wait *= 2
    return waits


@contextlib.contextmanager
def step_errors(context: Any = None, retry_window_s: float = 0.0) -> Iterator[None]:
    """Inside an asset: a `BadInputError` fails the step without retries; a `TransientError`
    asks Dagster to run the step again after the next wait of `backoff_schedule`, until the
    window is spent. Other exceptions pass through untouched."""
    import dagster as dg

    try:
        yield
    except TransientError as exc:  # checked first: an error that is both (an endpoint down) may pass
        waits = backoff_schedule(retry_window_s)
        attempt = int(getattr(context, "retry_number", 0) or 0)
        if attempt >= len(waits):
            raise dg.Failure(description=f"{exc} (gave up after {attempt} retries over {sum(waits):.0f} s; "
                                         "retry_window_s sets how long to keep trying)", allow_retries=False) from exc
        if context is not None:
            context.log.warning(f"{exc}: retry {attempt + 1} of {len(waits)} in {waits[attempt]:.0f} s")
        raise dg.RetryRequested(max_retries=len(waits), seconds_to_wait=waits[attempt]) from exc
    except BadInputError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
