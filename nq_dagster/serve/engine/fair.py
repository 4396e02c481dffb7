"""Fair service between API keys (issue 26 item 5): which accepted ticks the next batch predicts.

A request is planned when the worker takes it (validated, each tick new or a re-post); its new ticks then wait
here, in the lane of its key and priority, until a batch predicts them. Each batch takes ticks round robin
over the keys that have some, one tick per key per round, at most `BATCH_TICKS` ticks in all and at most
`SOURCE_STEPS` of one source, one while another key has ticks waiting (a source's ticks are predicted one
after another: their count, not the number of sources, sets how long a batch takes). So a key posting
1,000-value requests on several connections gets its share of each batch, and a key sending single ticks waits
about one short batch, not behind whole 1,000-tick requests (bench/RESULTS.md, "Fairness between keys"). A
source's ticks still go in the order they were accepted, whichever key sent them: a tick waits for the earlier
ticks of its source.

The request's answer waits for its last tick (it is acknowledged only once every tick is in the log).
Everything here runs on the worker thread.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from nq_dagster.serve.engine.work import Answer, Planned, Work

BATCH_TICKS = 256  # new ticks predicted in one batch, all keys together
# ticks of one source in one batch (each is a sequential step of its stream, so these set a batch's length): a
# key alone gets a few (fewer batches, less overhead per tick); with another key waiting, one, so that key
# waits at most about two one-step batches (bench/RESULTS.md, "Fairness between keys")
SOURCE_STEPS = 2
SHARED_STEPS = 1
LANES = 3  # a key's priorities: high, normal, low (work.PRIORITY_*)


@dataclass(eq=False, slots=True)
class Running:
    """A planned request: `missing` answers still to come (its new ticks, and re-posts of ticks other requests
    brought that are not predicted yet)."""

    work: Work
    planned: list[Planned]
    answers: dict[tuple[str, int], Answer] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    missing: int = 0
    failed: bool = False

    def answer_list(self) -> list[Answer]:
        out = []
        for p in self.planned:
            if p.stored is not None:
                out.append(Answer(p.stored, None, True))
            else:
                a = self.answers[(p.source, p.ts_ns)]
                out.append(Answer(a.record, a.text, p.duplicate))
        return out


@dataclass(eq=False, slots=True)
class Pending:
    """One accepted tick not predicted yet; `waiters` re-posted it meanwhile and get its answer too."""

    source: str
    ts_ns: int
    value: float
    run: Running
    waiters: list[Running] = field(default_factory=list)


class FairTicks:
    def __init__(
        self,
        batch_ticks: int = BATCH_TICKS,
        source_steps: int = SOURCE_STEPS,
        shared_steps: int = SHARED_STEPS,
    ):
        self.batch_ticks, self.source_steps, self.shared_steps = batch_ticks, source_steps, shared_steps
        self._lanes: dict[str, list[collections.deque[Pending]]] = {}
        self._rr: collections.deque[str] = collections.deque()  # keys with ticks waiting, next first
        self._order: dict[str, collections.deque[Pending]] = {}  # per source, in the order accepted
        self.index: dict[tuple[str, int], Pending] = {}  # (source, ts_ns) -> its waiting tick

    def __len__(self) -> int:
        return len(self.index)

    def add(self, key: str, priority: int, ticks: list[Pending]) -> None:
        """A planned request's new ticks (in order per source)."""
        if not ticks:
            return
        lanes = self._lanes.get(key)
        if lanes is None:
            lanes = self._lanes[key] = [collections.deque() for _ in range(LANES)]
            self._rr.append(key)
        lanes[min(max(priority, 0), LANES - 1)].extend(ticks)
        for p in ticks:
            self._order.setdefault(p.source, collections.deque()).append(p)
            self.index[(p.source, p.ts_ns)] = p
            p.run.pending.append(p)

    def last(self, source: str) -> int | None:
        """The time of the source's last accepted tick still waiting (None: none waits)."""
        for p in reversed(self._order.get(source, ())):
            if not p.run.failed:
                return p.ts_ns
        return None

    def drop(self, run: Running) -> None:
        """A failed request's ticks leave (they are skipped when they reach a lane's head)."""
        for p in run.pending:
            if self.index.get((p.source, p.ts_ns)) is p:
                del self.index[(p.source, p.ts_ns)]

    def pick(self) -> dict[str, list[Pending]]:
        """The next batch's ticks per source (see the module docstring), taken out of their lanes."""
        taken: dict[str, list[Pending]] = {}
        n = 0
        steps = self.source_steps if len(self._rr) == 1 else self.shared_steps
        while n < self.batch_ticks:
            progressed = False
            for key in self._rr:
                p = self._take(self._lanes[key], taken, steps)
                if p is None:
                    continue
                taken.setdefault(p.source, []).append(p)
                n += 1
                progressed = True
                if n >= self.batch_ticks:
                    break
            if not progressed:
                break
        for key in [k for k in self._rr if not any(self._lanes[k])]:
            self._rr.remove(key)
            del self._lanes[key]
        for source in [s for s, q in self._order.items() if not q]:
            del self._order[source]
        self._rr.rotate(-1)  # the next batch starts its rounds with the next key
        return taken

    def _take(
        self, lanes: list[collections.deque[Pending]], taken: dict[str, list[Pending]], steps: int
    ) -> Pending | None:
        """The key's first tick (highest priority lane first) that may go now: the next of its source and
        within the source's steps."""
        for lane in lanes:
            _skip_failed(lane)
            if not lane:
                continue
            p = lane[0]
            order = self._order[p.source]
            _skip_failed(order)
            if order[0] is p and len(taken.get(p.source, ())) < steps:
                lane.popleft()
                order.popleft()
                return p
        return None


def _skip_failed(q: collections.deque[Pending]) -> None:
    while q and q[0].run.failed:
        q.popleft()
