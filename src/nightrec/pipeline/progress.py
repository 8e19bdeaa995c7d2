"""Progress lines for long stages: what step, n of m, elapsed, rows; and, while Spark works, which
job and how many of its tasks are done. They go to the task log (stderr), one line each."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

HEARTBEAT_SECONDS = 30.0


class Progress:
    def __init__(self, stage: str, spark=None, heartbeat: float = HEARTBEAT_SECONDS, out=None):
        self.stage = stage
        self.spark = spark
        self.heartbeat = heartbeat
        self.out = out or sys.stderr
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{self.stage} {elapsed:7.1f} s] {message}", file=self.out, flush=True)

    @contextmanager
    def step(self, name: str, n: int | None = None, of: int | None = None, **facts):
        """Logs the step's start and end (with its seconds); while it runs, a line every `heartbeat`
        seconds with Spark's active stages, so a long fit is never silent."""
        label = f"{name} ({n} of {of})" if n is not None and of is not None else name
        details = " ".join(f"{k}={_number(v)}" for k, v in facts.items())
        self(f"{label} started {details}".rstrip())
        started = time.monotonic()
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(label, started, done), daemon=True)
        watcher.start()
        try:
            yield
        except BaseException as error:
            self(f"{label} failed after {time.monotonic() - started:.1f} s: {type(error).__name__}")
            raise
        finally:
            done.set()
            watcher.join()
        self(f"{label} done in {time.monotonic() - started:.1f} s")

    def _watch(self, label: str, started: float, done: threading.Event) -> None:
        while not done.wait(self.heartbeat):
            self(f"{label} still running after {time.monotonic() - started:.0f} s{self._spark_status()}")

    def _spark_status(self) -> str:
        if self.spark is None:
            return ""
        try:
            tracker = self.spark.sparkContext.statusTracker()
            stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
        except Exception:  # the status is a courtesy: never fail a step over it
            return ""
        parts = [f"stage {s.stageId} {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages if s is not None]
        return ": Spark " + ", ".join(parts) if parts else ""


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
