"""Watcher: follow a training run's folder and audit every new generator snapshot once, in kimg order.

Each poll lists the snapshots (``snapshots.find_snapshots``), skips those already in
``audits.jsonl`` (by file name, so a restarted watch audits nothing twice), waits until the next one
has stopped changing, loads it (``read_generator_file`` or the user's factory), audits it with the
``Auditor`` (taking the loop's own FID when it logged one), appends the record through ``AuditLog`` and
refreshes ``release.json`` and W&B (and the report figures, at most ~1/10 of the time, and when it stops). A snapshot that cannot be read (truncated,
corrupt) is skipped with a warning and retried once; one whose generator output is wrong is recorded
as a failed audit with a one-line warning; neither ends the watch. Appends are not interrupted by
Ctrl-C or SIGTERM: the signal takes effect once the line is written.

Example (``generator_factory`` is any ``path -> generator`` function):
    >>> import tempfile
    >>> from pathlib import Path
    >>> w = Watcher(tempfile.mkdtemp(), auditor=None)
    >>> w.pending()
    []
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from gmia_defend.attack.generator_loading import (CorruptSnapshotError, SnapshotGenerator, num_classes,
                                                  read_generator_file)
from gmia_defend.audit.log import AuditLog
from gmia_defend.audit.policies import ReleaseRule
from gmia_defend.audit.record import AuditRecord
from gmia_defend.errors import GeneratorError, UserError
from gmia_defend.watch.classes import combine_classes
from gmia_defend.watch.outputs import update_figures, update_release
from gmia_defend.watch.signals import InterruptGuard
from gmia_defend.watch.snapshots import DEFAULT_PATTERNS, Snapshot, StabilityTracker, describe_patterns, find_snapshots

__all__ = ["WatchOptions", "Watcher"]

#: Figures are redrawn after an audit only when at least this many times their last drawing time has
#: passed since (and always when the watch stops), so drawing takes at most ~1/10 of a busy watch's time.
FIGURE_COST_FACTOR = 10.0


@dataclass
class WatchOptions:
    """How to follow a run; see ``gmia-defend watch --help`` for each option."""

    patterns: Sequence[str] = DEFAULT_PATTERNS
    trust_pickle: bool = False
    class_index: int | str | None = None  # an int, "all" (every class), or None
    generator_factory: Callable[[Path], Any] | None = None
    device: Any = None
    settle_s: float = 2.0
    poll_s: float = 5.0
    idle_timeout_s: float = 1800.0
    quality_wait_s: float = 600.0
    retry_after_s: float | None = None  # None: 5 x settle_s
    once: bool = False
    figures: bool = True
    rule: ReleaseRule = field(default_factory=ReleaseRule)


@dataclass
class _Failure:
    count: int
    signature: Any
    at: float


class Watcher:
    """Audit each snapshot of ``run_dir`` once (see the module docstring)."""

    def __init__(self, run_dir: str | Path, auditor: Any, options: WatchOptions | None = None,
                 log: AuditLog | None = None, quality: Any = None, wandb: Any = None,
                 echo: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir).expanduser()
        self.auditor, self.opts = auditor, options or WatchOptions()
        self.log = log if log is not None else AuditLog(self.run_dir)
        self.quality, self.wandb, self.echo = quality, wandb, echo
        self.tracker = StabilityTracker(self.opts.settle_s)
        self.failures: dict[str, _Failure] = {}
        self.given_up: set[str] = set()
        self.audited: list[str] = []
        self.started = time.time()
        self._ready_since: dict[str, float] = {}
        self._done: set[str] | None = None
        self._ordinal_warned = False
        self.guard = InterruptGuard()
        self._figures_due, self._drawn_at, self._draw_s = False, -math.inf, 0.0

    # ------------------------------------------------------------------------------ state
    def done(self) -> set[str]:
        """Snapshot names already in ``audits.jsonl`` (successful or failed audits)."""
        if self._done is None:
            self._done = {str(r.checkpoint) for r in self.log.records() if r.checkpoint}
        return self._done

    def pending(self) -> list[Snapshot]:
        """Snapshots not audited yet, in training order."""
        if not self.run_dir.is_dir():
            return []
        done = self.done()
        return [s for s in find_snapshots(self.run_dir, self.opts.patterns)
                if s.name not in done and s.name not in self.given_up]

    def _repair_torn_tail(self) -> None:
        """A run killed mid-append leaves a torn last line: reading warns naming it; the next line starts fresh."""
        path = self.log.path
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb") as fh:
            fh.seek(-1, 2)
            if fh.read(1) == b"\n":
                return
        self.log.records()  # warns, naming the torn line
        with open(path, "ab") as fh:
            fh.write(b"\n")

    # ------------------------------------------------------------------------------ running
    def run(self) -> int:
        """Follow the run until it is idle for ``idle_timeout_s`` (or, with ``once``, until all is audited)."""
        if not self.run_dir.is_dir():
            raise UserError(f"run folder not found: {self.run_dir}; pass the folder the training loop writes "
                            "snapshots into")
        self._repair_torn_tail()
        with self.guard.installed():
            try:
                code = self._loop()
            except KeyboardInterrupt:
                self.echo(f"watch: interrupted; {len(self.audited)} snapshot(s) audited this time, every record "
                          "written is complete; run the same command to resume")
                code = 0
            finally:
                if self.wandb is not None:
                    self.wandb.finish()
        with contextlib.suppress(KeyboardInterrupt):
            self.draw_figures()
        return code

    def _loop(self) -> int:
        announced = False
        while True:
            progressed = self.poll()
            pending = self.pending()
            if not self.done() and not pending and not self.given_up:
                if self.opts.once or self._idle() >= self.opts.idle_timeout_s:
                    raise UserError(f"no snapshots in {self.run_dir}: looked for "
                                    f"{describe_patterns(self.opts.patterns)} (pass --pattern GLOB for other "
                                    "file names)")
                if not announced:
                    self.echo(f"watch: waiting for snapshots in {self.run_dir} "
                              f"({describe_patterns(self.opts.patterns)})")
                    announced = True
            if self.opts.once and not pending:
                return 0
            if not self.opts.once and not pending and self._idle() >= self.opts.idle_timeout_s:
                self.echo(f"watch: the run wrote nothing for {self.opts.idle_timeout_s:g} s; stopping "
                          f"({len(self.done())} snapshot(s) in audits.jsonl)")
                return 0
            if self.opts.once and pending and self._idle() >= max(self.opts.idle_timeout_s, self.opts.settle_s):
                self.echo(f"watch: {len(pending)} snapshot(s) still changing after the idle timeout; not audited: "
                          + ", ".join(s.name for s in pending))
                return 0
            if not progressed:
                time.sleep(min(self.opts.poll_s, max(self.opts.settle_s / 2, 0.05)) if pending else self.opts.poll_s)

    def _idle(self) -> float:
        """Seconds since the run last wrote a snapshot or a metric line (or since the watch started)."""
        newest = self.started
        files = list(find_snapshots(self.run_dir, self.opts.patterns)) if self.run_dir.is_dir() else []
        for path in [s.path for s in files] + list(self.run_dir.glob("metric-*.jsonl")):
            with contextlib.suppress(OSError):
                newest = max(newest, path.stat().st_mtime)
        return time.time() - newest

    def poll(self) -> bool:
        """Audit every pending snapshot that is ready, in order; stops at the first that is not. True if any."""
        progressed = False
        pending = self.pending()
        for snap in pending[1:]:  # start the settle clock of every new file, not only the next one
            self.tracker.ready(snap.path)
        for snap in pending:
            if not self.tracker.ready(snap.path):
                break
            failure = self.failures.get(snap.name)
            if failure is not None and failure.signature == self.tracker.signature(snap.path) \
                    and time.monotonic() - failure.at < self._retry_after():
                break  # retry once, after a pause or once the file changed
            if not self._quality_ready(snap):
                break
            self.audit_snapshot(snap)
            progressed = True
        return progressed

    def _retry_after(self) -> float:
        return self.opts.retry_after_s if self.opts.retry_after_s is not None else 5.0 * self.opts.settle_s

    def _quality_ready(self, snap: Snapshot) -> bool:
        """Wait (up to ``quality_wait_s``) for the loop's own quality figure when it logs one."""
        if self.quality is None or not self.quality.expects_values:
            return True
        if self.quality.lookup(snap.name, snap.kimg) is not None:
            return True
        first = self._ready_since.setdefault(snap.name, time.monotonic())
        return self.opts.once or time.monotonic() - first >= self.opts.quality_wait_s

    # ------------------------------------------------------------------------------ one snapshot
    def _load(self, snap: Snapshot) -> Any:
        if self.opts.generator_factory is not None:
            try:
                generator = self.opts.generator_factory(snap.path)
            except (EOFError, RuntimeError, ValueError) as err:
                if isinstance(err, UserError) and not isinstance(err, CorruptSnapshotError):
                    raise
                raise CorruptSnapshotError(f"the generator factory could not read {snap.path}: "
                                           f"{type(err).__name__}: {err}") from err
            if not callable(generator):
                raise UserError(f"the generator factory returned {type(generator).__name__} for {snap.path}, "
                                "not a generator (z -> images)")
            return generator
        return read_generator_file(snap.path, trust_pickle=self.opts.trust_pickle)

    def _kimg(self, snap: Snapshot, generator: Any) -> float:
        if snap.kimg is not None:
            return snap.kimg
        value = getattr(generator, "kimg", None)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        if not self._ordinal_warned:
            self._ordinal_warned = True
            warnings.warn(f"cannot tell the kimg of {snap.name} (no 'snapshot-<kimg>' or 'kimg=<n>' in its name); "
                          "using its position in the run instead", UserWarning, stacklevel=2)
        return float(len(self.done()))

    def _classes(self, generator: Any) -> list[int | None]:
        wanted = self.opts.class_index
        if wanted == "all":
            n = num_classes(generator)
            if n == 0:
                raise UserError("--class-index all was given but the generator is not conditional (no c_dim > 0)")
            return list(range(n))
        return [None if wanted is None else int(wanted)]

    def _wrap(self, generator: Any, class_index: int | None) -> Any:
        import torch

        nvidia_like = hasattr(generator, "z_dim") and hasattr(generator, "c_dim") and isinstance(generator,
                                                                                                 torch.nn.Module)
        if nvidia_like and not isinstance(generator, SnapshotGenerator):
            generator = SnapshotGenerator(generator, class_index)
        elif class_index is not None:
            raise UserError("--class-index was given but the generator is not conditional (no c_dim > 0)")
        if self.opts.device is not None and isinstance(generator, torch.nn.Module):
            generator = generator.to(self.opts.device)
        return generator

    def audit_snapshot(self, snap: Snapshot) -> AuditRecord | None:
        """Load and audit one snapshot; append its record. None when the file could not be read."""
        t0 = time.perf_counter()
        try:
            generator = self._load(snap)
        except CorruptSnapshotError as err:
            self._note_failure(snap, err)
            return None
        kimg = self._kimg(snap, generator)
        quality_value = self.quality.lookup(snap.name, kimg) if self.quality is not None else None
        if quality_value is None and self.quality is not None and self.quality.expects_values:
            quality_value = math.nan  # the loop logs quality but not for this one: not measured, not mixed keys
        quality_key = self.quality.key if self.quality is not None else "quality/fid"
        records = []
        try:
            for k in self._classes(generator):
                record = self.auditor.audit(self._wrap(generator, k), kimg=kimg, checkpoint=snap.name,
                                            quality_value=quality_value, quality_key=quality_key)
                record.hook = "watch"
                if k is not None:
                    record.extra["class_index"] = k
                records.append(record)
        except GeneratorError as err:
            self.echo(f"watch: warning: {snap.name}: {err}")
            record = AuditRecord.failed(kimg, err, checkpoint=snap.name, hook="watch", time=time.time())
            self._append(record, None)
            return record
        if self.opts.class_index == "all":
            for k, r in enumerate(records):
                with self.guard.critical():
                    AuditLog(self.run_dir / f"class-{k}", pseudonymize=self.log.pseudonymize).append(r, None)
            record = combine_classes(records)
        else:
            record = records[0]
        record.wall_s = round(time.perf_counter() - t0, 3)
        self._append(record, self.auditor.result if len(records) == 1 else None)
        self.audited.append(snap.name)
        self.failures.pop(snap.name, None)
        self._after_audit(record)
        return record

    def _note_failure(self, snap: Snapshot, err: Exception) -> None:
        previous = self.failures.get(snap.name)
        count = 1 if previous is None else previous.count + 1
        if count >= 2:
            self.given_up.add(snap.name)
            self.failures.pop(snap.name, None)
            self.echo(f"watch: warning: skipping {snap.name} for good (failed twice): {err}")
        else:
            self.failures[snap.name] = _Failure(count, self.tracker.signature(snap.path), time.monotonic())
            self.echo(f"watch: warning: skipping {snap.name} for now, will retry once: {err}")

    def draw_figures(self, records: Sequence[AuditRecord] | None = None, decision: dict | None = None) -> None:
        """Redraw the report figures if an audit came in since they were last drawn."""
        if not self._figures_due:
            return
        records = self.log.records() if records is None else records
        decision = decision if decision is not None else update_release(self.run_dir, records, self.opts.rule)
        start = time.monotonic()
        update_figures(self.run_dir, records, self.opts.rule, decision)
        self._drawn_at = time.monotonic()
        self._draw_s, self._figures_due = self._drawn_at - start, False

    def _append(self, record: AuditRecord, result: Any) -> None:
        with self.guard.critical():
            self.log.append(record, result)
            self.done().add(str(record.checkpoint))

    def _after_audit(self, record: AuditRecord) -> None:
        metric = self.opts.rule.metric
        q = record.quality_key
        qtext = f", {q} {record.metric(q):.4g}" if q else ""
        self.echo(f"watch: {record.checkpoint} at {record.kimg:g} kimg: {metric} {record.metric(metric):.4f} "
                  f"[{record.metric('leakage/auc_ci_low'):.3f}, {record.metric('leakage/auc_ci_high'):.3f}]{qtext} "
                  f"({record.wall_s:.1f} s)")
        records = self.log.records()
        decision = update_release(self.run_dir, records, self.opts.rule)
        self._figures_due = self.opts.figures
        if time.monotonic() - self._drawn_at >= FIGURE_COST_FACTOR * self._draw_s:
            self.draw_figures(records, decision)
        if self.wandb is not None:
            evidence = self.run_dir / record.evidence if record.evidence else None
            self.wandb.audit(record, records, self.log.pseudonym, evidence, metric, decision.get("quality_metric"))
            self.wandb.release(decision)
