"""Progress of a Dagster run executed in this process, for `nq run` and `nq demo`: the step running and its
share of the graph, the rows the finished steps reported, the time elapsed and an estimate of the time left.
It listens to the run's events (`DagsterInstance.add_event_listener`); on a terminal it rewrites one line
every second, elsewhere (a log file, CI) it prints one plain line per step.

The estimate is measured, never guessed from the share of steps (the steps differ a hundredfold in cost):
each step's median duration over the last five successful runs of the same job on this instance, scaled by
this source's rows against theirs (training time grows about linearly in rows, docs/pipeline.md). Without
such a run there is no estimate, and the line says so."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

ROWS_TAG = "nq/rows"  # the rows a run was started on: the scale of the next run's estimate


@dataclass
class StepHistory:
    """Seconds each step took in an earlier run of the job, and the rows that run had."""

    seconds: dict[str, float]
    rows: int

    def estimate(self, steps_left: list[str], rows: int) -> float:
        scale = rows / self.rows if self.rows > 0 and rows > 0 else 1.0
        return scale * sum(self.seconds.get(s, 0.0) for s in steps_left)


def step_history(instance, job_name: str, runs: int = 5) -> StepHistory | None:
    """Each step's duration over the last `runs` successful runs of `job_name` that recorded their rows: the
    median, each run scaled to the rows of the latest (one run on a machine that was busy at the time would
    make every later estimate wrong by as much); None when there is no such run."""
    import statistics

    from dagster import DagsterRunStatus, RunsFilter

    measured: list[tuple[dict[str, float], int]] = []
    for run in instance.get_runs(
        filters=RunsFilter(job_name=job_name, statuses=[DagsterRunStatus.SUCCESS]), limit=4 * runs
    ):
        if ROWS_TAG not in run.tags:
            continue
        stats = instance.get_run_step_stats(run.run_id)
        seconds = {s.step_key: s.end_time - s.start_time for s in stats if s.start_time and s.end_time}
        if seconds:
            measured.append((seconds, max(1, int(run.tags[ROWS_TAG]))))
        if len(measured) == runs:
            break
    if not measured:
        return None
    rows = measured[0][1]
    steps = {k for seconds, _ in measured for k in seconds}
    return StepHistory(
        {k: statistics.median(sec[k] * rows / n for sec, n in measured if k in sec) for k in steps},
        rows,
    )


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


@dataclass
class RunProgress:
    """One run's progress, drawn on `out`. `steps`: the job's step keys (its share of the graph is counted
    over them); `history`: an earlier run's step durations for the estimate (None: no estimate)."""

    label: str
    steps: list[str]
    rows: int
    history: StepHistory | None = None
    out: object = sys.stderr
    tty: bool | None = None
    width: int = 100
    started: float = field(default_factory=time.monotonic)
    done: list[str] = field(default_factory=list)
    running: str | None = None
    rows_seen: dict[str, int] = field(default_factory=dict)
    since: float = 0.0  # when the running step started (monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.tty is None:
            self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        if self.tty:  # redraw every second so the elapsed time moves during a long step
            threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self):
        while not self._stop.wait(1.0):
            self._draw()

    def on_event(self, record) -> None:
        """An event of the run (an EventLogEntry): step starts and ends move the line; materializations give
        rows."""
        ev = record.dagster_event
        if ev is None:
            return
        with self._lock:
            if ev.is_step_start:
                self.running, self.since = ev.step_key, time.monotonic()
                if not self.tty:
                    self._line()
            elif ev.is_step_success or ev.is_step_failure or ev.is_step_skipped:
                if ev.step_key not in self.done:
                    self.done.append(ev.step_key)
                if self.running == ev.step_key:
                    self.running = None
            elif ev.is_step_materialization:
                meta = ev.event_specific_data.materialization.metadata
                n = meta.get("dagster/row_count")
                if n is not None:
                    self.rows_seen[ev.step_key] = int(n.value)
        if self.tty:
            self._draw()

    def status(self) -> str:
        """The line: label, bar or count, the step running, rows, elapsed, estimate."""
        total = max(len(self.steps), 1)
        n = len(self.done)
        elapsed = time.monotonic() - self.started
        left = [s for s in self.steps if s not in self.done]
        if self.history is not None:
            eta = self.history.estimate(left, self.rows)
            if self.running is not None:  # the running step's time so far counts off its own share only
                own = self.history.estimate([self.running], self.rows)
                eta -= min(own, time.monotonic() - self.since)
            when = f"~{_clock(eta)} left"
        else:
            when = "no estimate yet (first run)"
        step = self.running or ("done" if n >= total else "starting")
        rows = self.rows_seen.get(self.running or "", None) or (
            max(self.rows_seen.values()) if self.rows_seen else None
        )
        rows_txt = f", {rows:,} rows" if rows else ""
        head = f"  {self.label} "
        tail = f" {n}/{total} {step}{rows_txt}, {_clock(elapsed)}, {when}"
        if self.tty:
            bar_w = max(10, self.width - len(head) - len(tail) - 3)
            fill = int(bar_w * n / total)
            return (head + "[" + "#" * fill + "." * (bar_w - fill) + "]" + tail)[: self.width - 1]
        k = n + 1 if self.running else n
        return f"{head.rstrip()}: step {k}/{total} {step}{rows_txt}, {_clock(elapsed)}, {when}"

    def _line(self):
        self.out.write(self.status() + "\n")
        self.out.flush()

    def _draw(self):
        with self._lock:
            self.out.write("\r" + self.status().ljust(self.width - 1))
            self.out.flush()

    def close(self) -> None:
        """Stop redrawing; on a terminal, clear the line for the run's result."""
        self._stop.set()
        if self.tty:
            with self._lock:
                self.out.write("\r" + " " * (self.width - 1) + "\r")
                self.out.flush()
