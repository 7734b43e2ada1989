"""Every trial's record by id, with those that cannot change packed into one ``bytes``.

A driver keeps a record for every trial of the experiment, for its life.
Most trials have ended (or wait, paused) and nothing about them changes
until the tuner touches them again. ``TrialRecords`` keeps such a record
packed: its status, last metric and folder in a small header, everything
else in one ``marshal`` payload, about a seventh of the objects it stands
for. Any access by id (``records[trial_id]``) unpacks it and keeps it
unpacked; the table packs it again at its next pass once it is still not
live (see ``TrialTable.live_records``). So a caller never sees a packed
record, and must not keep a record across passes: each call looks records
up by id, and the table's ``failed_runs`` holds only running trials, which
are never packed. A fetch of a packed trial, which delivers nothing new,
needs only its ``Trial`` and status: ``packed_trial`` reads them from the
packed bytes, and the record stays packed.

What a record refers to that cannot be packed by value (the journal, the
experiment folder's ``Path``, the limits, which most trials share) is kept
once, in ``_shared``, and packed as its index there. A record with a value
``marshal`` cannot write (a config entry of some unusual type) simply stays
unpacked, as does one with a datetime that has a time zone. Retention ranks
every trial by status and last metric, which ``summaries`` gives without
unpacking, and finds its checkpoints by ``paths``.
"""

from __future__ import annotations

import dataclasses
import datetime
import marshal
import struct
from collections.abc import Container, Iterator
from typing import Any, Optional, Union

from .._errors import TrialNotFoundError
from .._paths import TrialPaths
from .._types import Status, Trial
from ._results import ResultsReader, TuneMetricReader
from ._trials import NO_RUNS, TrialRecord, with_run

# Fields packed otherwise than by value, or not at all (the id is the index).
_SPECIAL = frozenset({
    "trial_id", "paths", "journal", "results_reader", "stdout_reader", "creation_time",
    "training_end_time", "limits",
})
_PLAIN = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.name not in _SPECIAL)
# Each plain field's default: a field at its default is left out of the payload.
_DEFAULTS = tuple(
    f.default_factory() if f.default is dataclasses.MISSING
    and f.default_factory is not dataclasses.MISSING else f.default
    for f in dataclasses.fields(TrialRecord) if f.name in _PLAIN
)
_RUN_SETS = frozenset(
    f.name for f in dataclasses.fields(TrialRecord) if f.default is NO_RUNS
)
# The statuses of a record that can be packed (a running trial could change).
_STATUSES = (Status.completed, Status.failed, Status.stopped, Status.paused)
# Header: the status (its index in _STATUSES), whether there is a last metric, it,
# and the experiment folder's index in ``_shared``.
_HEADER = struct.Struct("<BBdI")
_MARSHAL_VERSION = 4
# Naive datetimes are packed as microseconds since this one (exact, and small).
_EPOCH = datetime.datetime(1970, 1, 1)
_MICROSECOND = datetime.timedelta(microseconds=1)


@dataclasses.dataclass(frozen=True)
class Summary:
    """What retention needs of a trial, packed or not."""

    trial_id: int
    status: str
    alive: bool
    last_metric: Optional[float]


class TrialRecords:
    """The records of one table, by trial id: ``len``, ``[trial_id]``, ``append``, ``pop``."""

    def __init__(self) -> None:
        self._items: list[Union[TrialRecord, bytes]] = []
        # Packed once, unpacked since by an access: packed again when not live.
        self._unpacked: set[int] = set()
        self._shared: list[Any] = []
        self._shared_index: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def checked(self, trial_id: object) -> int:
        """``trial_id``, if it names a trial here; else our error naming it."""
        count = len(self._items)
        if isinstance(trial_id, int) and not isinstance(trial_id, bool) and 0 <= trial_id < count:
            return trial_id
        raise TrialNotFoundError(trial_id, count)

    def __getitem__(self, trial_id: int) -> TrialRecord:
        item = self._items[trial_id]
        if isinstance(item, bytes):
            item = self._items[trial_id] = self._unpack(trial_id, item)
            self._unpacked.add(trial_id)
        return item

    def append(self, record: TrialRecord) -> None:
        self._items.append(record)

    def pop(self) -> TrialRecord:
        """Take back the last record (a start that failed)."""
        record = self[len(self._items) - 1]
        self._items.pop()
        self._unpacked.discard(record.trial_id)
        return record

    def is_packed(self, trial_id: int) -> bool:
        return isinstance(self._items[trial_id], bytes)

    def paths(self, trial_id: int) -> TrialPaths:
        """The trial's files, without unpacking its record."""
        item = self._items[trial_id]
        if isinstance(item, TrialRecord):
            return item.paths
        return TrialPaths.of_trial(self._shared[_HEADER.unpack_from(item)[3]], trial_id)

    def packed_trial(self, trial_id: int) -> Optional[tuple[Trial, str]]:
        """A packed trial's ``Trial`` and status, as its record gives them; None if not packed.

        The record is not unpacked: a tuner that fetches ended trials on every
        poll pays neither an unpack nor, at the next pass, a pack again.
        """
        item = self._items[trial_id]
        if not isinstance(item, bytes):
            return None
        status, _has_metric, _metric, root = _HEADER.unpack_from(item)
        state = marshal.loads(memoryview(item)[_HEADER.size:])
        fields = dict(_plain_values(state[2]))
        trial = Trial(
            trial_id=trial_id,
            config=fields.get("config") or {},
            creation_time=_unpack_time(state[5]) or datetime.datetime.now(),  # as new() does
            exit_code=fields.get("exit_code"),
            exit_signal=fields.get("exit_signal"),
            stderr_tail=fields.get("stderr_tail", ""),
            trial_dir=TrialPaths.of_trial(self._shared[root], trial_id).root,
            training_end_time=_unpack_time(state[6]),
            failure_reason=fields.get("failure_reason"),
            failure_kind=fields.get("failure_kind"),
        )
        return trial, _STATUSES[status]

    def summaries(self) -> Iterator[Summary]:
        """Each trial's status, whether a run of it is alive, and its last metric."""
        for trial_id, item in enumerate(self._items):
            if isinstance(item, TrialRecord):
                yield Summary(trial_id, item.status, bool(item.alive_runs), item.last_metric)
            else:
                status, has_metric, metric, _root = _HEADER.unpack_from(item)
                yield Summary(trial_id, _STATUSES[status], False, metric if has_metric else None)

    # -- packing -------------------------------------------------------------------

    def pack(self, trial_id: int) -> None:
        """Pack the record of a trial that can no longer change until it is touched."""
        item = self._items[trial_id]
        if isinstance(item, bytes):
            return
        self._unpacked.discard(trial_id)
        packed = self._pack(item)
        if packed is None:
            item.compact()
        else:
            self._items[trial_id] = packed

    def pack_again(self, live: Container[int]) -> None:
        """Pack again the records unpacked since they were packed, but for ``live`` ones."""
        for trial_id in [t for t in self._unpacked if t not in live]:
            self.pack(trial_id)

    def _share(self, value: Any) -> int:
        index = self._shared_index.get(id(value))
        if index is None:
            index = self._shared_index[id(value)] = len(self._shared)
            self._shared.append(value)  # kept, so that its id is never reused
        return index

    def _pack(self, record: TrialRecord) -> Optional[bytes]:
        paths = record.paths
        if (
            record.status not in _STATUSES or record.alive_runs or record.attached
            or record.has_news or paths.trial_id != record.trial_id
            or type(record.results_reader) is not ResultsReader
            or type(record.stdout_reader) is not TuneMetricReader
        ):
            return None
        root = self._share(paths.experiment_root)
        try:
            state = (
                self._share(record.journal),
                self._share(record.limits),
                _pack_plain(record),
                record.results_reader.state(),
                record.stdout_reader.state(),
                _pack_time(record.creation_time),
                _pack_time(record.training_end_time),
            )
            payload = marshal.dumps(state, _MARSHAL_VERSION)
        except ValueError:  # a value not packed (see above): the record stays as it is
            return None
        if root >= 1 << 32:
            return None
        metric = record.last_metric
        header = _HEADER.pack(
            _STATUSES.index(record.status), metric is not None,
            0.0 if metric is None else metric, root,
        )
        return header + payload

    def _unpack(self, trial_id: int, packed: bytes) -> TrialRecord:
        (journal, limits, plain, results_state, stdout_state, creation,
         ended) = marshal.loads(packed[_HEADER.size:])
        paths = TrialPaths.of_trial(self._shared[_HEADER.unpack_from(packed)[3]], trial_id)
        paths.forget()
        record = TrialRecord.new(
            trial_id, {}, paths, self._shared[journal], _unpack_time(creation)
        )
        for name, value in _plain_values(plain):
            setattr(record, name, _run_set(value) if name in _RUN_SETS else value)
        record.results_reader.set_state(results_state)
        record.stdout_reader.set_state(stdout_state)
        record.training_end_time = _unpack_time(ended)
        record.limits = self._shared[limits]
        return record


def _pack_plain(record: TrialRecord) -> tuple[Any, ...]:
    """The plain fields not at their default, after a mask of which they are."""
    mask, values = 0, []
    for bit, (name, default) in enumerate(zip(_PLAIN, _DEFAULTS)):
        value = getattr(record, name)
        if type(value) is not type(default) or value != default:
            mask |= 1 << bit
            values.append(value)
    return (mask, *values)


def _plain_values(plain: tuple[Any, ...]) -> Iterator[tuple[str, Any]]:
    """The packed plain fields, each ``(name, value)``: those not at their default."""
    mask, *values = plain
    given = iter(values)
    for bit, name in enumerate(_PLAIN):
        if mask >> bit & 1:
            yield name, next(given)


def _pack_time(moment: Optional[datetime.datetime]) -> Union[int, tuple[int, int], None]:
    """A naive datetime as microseconds, with its ``fold`` (the repeated hour) when set."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        raise ValueError("a datetime with a time zone is not packed")
    micros = (moment - _EPOCH) // _MICROSECOND
    return (micros, moment.fold) if moment.fold else micros


def _unpack_time(packed: Union[int, tuple[int, int], None]) -> Optional[datetime.datetime]:
    if packed is None:
        return None
    if isinstance(packed, tuple):
        return (_EPOCH + packed[0] * _MICROSECOND).replace(fold=packed[1])
    return _EPOCH + packed * _MICROSECOND


def _run_set(runs: frozenset[int]) -> frozenset[int]:
    """The same set of runs, shared with other records as ``_trials`` shares them."""
    shared = NO_RUNS
    for run in sorted(runs):
        shared = with_run(shared, run)
    return shared
