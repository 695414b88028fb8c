"""Reading, computing and writing pairs, overlapped: the next pair is read while the current one is
registered, and the previous field is written while the current one is computed.

Three steps per item, each timed: ``read(item)`` in a reader thread, ``compute(item, data)`` in the
calling thread (where torch runs), ``write(item, result)`` in a writer thread. Each thread has one
item in flight at most, so besides the item being computed there is at most one item read ahead
and one field being written (the bounded queues are futures of single-worker executors). A step
that raises fails its item only; the driver reports every item once, in order, to ``done``.

With ``overlap=False`` the same steps run one after the other (the sequential path, kept for comparison
and for debugging): read and compute in the calling thread, the write in the writer thread, waited for at
once, so that an interrupt finishes the write it cut into, as on the overlapped path.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class Outcome:
    """What became of one item: ``value`` (the write step's return) or ``error`` (the step that raised's
    exception), and the seconds of each step (``read``, the compute step's own names, ``write``)."""

    value: Any = None
    error: BaseException | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class _Inline(Executor):
    """An executor that runs each call at once in the calling thread (the sequential path)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:  # noqa: D102
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut


def _timed(fn: Callable, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn(*args)
    return value, round(time.perf_counter() - t0, 3)


def run_items(items: Sequence[Any], read: Callable[[Any], Any],
              compute: Callable[[Any, Any], tuple[Any, dict[str, float]]],
              write: Callable[[Any, Any], Any], done: Callable[[Any, Outcome], bool],
              overlap: bool = True) -> list[Any]:
    """Read, compute and write every item; ``done(item, outcome)`` is called once per item, in order,
    in the calling thread, and returns True to stop the run (e.g. a full disk: no later write can
    succeed). Returns the items left undone by a stop (never read, or computed but not written).

    On KeyboardInterrupt the field being written is finished and reported first, then the interrupt
    propagates (the item being computed is not reported: the caller records it as interrupted).
    """
    reader: Executor = ThreadPoolExecutor(1, thread_name_prefix="l2r-read") if overlap else _Inline()
    # a thread even when sequential (waited for at once): an interrupt then finishes the write it cut into
    writer: Executor = ThreadPoolExecutor(1, thread_name_prefix="l2r-write")
    pending: tuple[Any, Future, Outcome] | None = None  # the item being written
    ahead: Future | None = None  # the item being read
    left: list[Any] = []

    def finish_pending() -> bool:
        nonlocal pending
        if pending is None:
            return False
        item, fut, outcome = pending
        try:
            outcome.value, outcome.seconds["write"] = fut.result()
        except Exception as exc:  # noqa: BLE001 - the writer's failure fails this item only
            outcome.error = exc
        pending = None  # only now: interrupted while waiting, the write is still waited for and reported
        return done(item, outcome)

    try:
        for i, item in enumerate(items):
            fut = ahead if ahead is not None else reader.submit(_timed, read, item)
            ahead = None
            outcome = Outcome()
            try:
                data, outcome.seconds["read"] = fut.result()
            except Exception as exc:  # noqa: BLE001 - the reader's failure fails this item only
                data, outcome.error = None, exc
            if overlap and i + 1 < len(items):
                ahead = reader.submit(_timed, read, items[i + 1])
            result = None
            if outcome.error is None:
                try:
                    result, stage_seconds = compute(item, data)
                    outcome.seconds.update(stage_seconds)
                except Exception as exc:  # noqa: BLE001 - one item's failure, the others go on
                    outcome.error = exc
                del data
            if finish_pending():  # the previous item's write ran while this one was computed
                left = list(items[i:])
                break
            if outcome.error is not None:
                if done(item, outcome):
                    left = list(items[i + 1:])
                    break
                continue
            pending = (item, writer.submit(_timed, write, item, result), outcome)
            del result
            if not overlap and finish_pending():
                left = list(items[i + 1:])
                break
        else:
            finish_pending()
    except KeyboardInterrupt:
        finish_pending()
        raise
    finally:
        if ahead is not None:
            ahead.cancel()
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    return left
