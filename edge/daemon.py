"""The appliance daemon: scanner folders -> jobs -> one pass (convert + analyse) -> outbox ->
destinations, unattended.

Threads, each with its own database connection:
- ingest: scans the watch folders, queues each finished slide once (edge.ingest.watch);
- converters (`[pipeline] slides_in_flight`): claim a job, run the pass, queue the instances
  for every destination, record the verdict; a slide that cannot be read is quarantined with
  the reason, a crash is retried up to `max_attempts` then parked as failed;
- one forwarder per destination: drains the outbox through its own circuit breaker, so a
  PACS that is down never slows the cloud copy;
- the main thread: signals, disk watermarks (ingest pauses above high_water, never deleting
  unsent data), retention of delivered files, the status line, sd_notify.

Restart safety: jobs left running and deliveries left sending go back to the queue; a job's
UIDs follow from its file, the output folder is replaced atomically and the outbox is keyed
by SOP Instance UID, so a slide converted twice is sent once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import watchfiles

from edge import __version__
from edge import config as cfg
from edge.audit.syslog import Collector, export
from edge.audit.trail import record
from edge.deid import deidentify_slide
from edge.deid.site import destination_policy, site_secret
from edge.errors import EdgeError, InputError
from edge.fileio import write_atomic
from edge.forward import factory
from edge.forward.worker import drain
from edge.ingest.receiver import Receiver
from edge.ingest.watch import Settler, folder_settle_s, scan
from edge.jobs import JobStore, job_counts
from edge.outbox.queries import OutboxReader
from edge.outbox.retry import CircuitBreaker, RetryPolicy
from edge.outbox.schema import DATABASE, connect, open_database
from edge.outbox.store import Outbox
from edge.pipeline import Stopping, analysis_options, priority_boost, process
from edge.sync.plan import link_request_bytes, part_cap, prepare_for
from edge.system.disk import DiskMonitor, DiskUsage, Watermarks, usage
from edge.system.mdns import Announced, Announcement, announce, announceable_port
from edge.system.notify import Watchdog

LOGGER = logging.getLogger(__name__)

HOUSEKEEPING_S = 600.0  # retention sweep
FORWARD_SLICE_S = 5.0  # a forwarder re-checks the stop flag at least this often


@dataclass
class Health:
    """Last heartbeat of each stage (monotonic seconds) and what the daemon is doing."""

    beats: dict[str, float] = field(default_factory=dict)
    ingest_paused: str = ""  # why, when the disk is above its high-water mark
    settling: int = 0  # slides seen but not yet finished (or not yet queued)
    scans: int = 0
    broken: dict[str, str] = field(default_factory=dict)  # destination -> why it cannot start
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_beat: Callable[[str], None] | None = None  # the systemd watchdog's bookkeeping

    def beat(self, stage: str) -> None:
        with self.lock:
            self.beats[stage] = time.monotonic()
        if self.on_beat is not None:
            self.on_beat(stage)


class Daemon:
    def __init__(
        self,
        config: cfg.Config,
        *,
        once: bool = False,
        notify: Callable[[str], object] | None = None,
        disk_usage: Callable[[Path], DiskUsage] = usage,
    ) -> None:
        self.config = config
        self.once = once
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.changed = threading.Event()  # a watch folder changed (inotify)
        # Set when a slide's instances are queued: an idle forwarder starts at once instead
        # of at its next half-second look at the outbox.
        self.queued = {d.name: threading.Event() for d in config.destinations}
        self.health = Health()
        self.database = config.state_dir / DATABASE
        self._notify = notify or (lambda line: None)
        self._disk_usage = disk_usage
        storage = config.storage
        # Fractions only: byte limits would need the site's disk size (a setting for later).
        self.disk = DiskMonitor(
            config.slides_dir,
            Watermarks(
                high_used=storage.high_water,
                low_used=storage.low_water,
                critical_used=max(0.97, storage.high_water),
                high_free_bytes=0,
                low_free_bytes=0,
                critical_free_bytes=0,
            ),
        )
        self._threads: list[threading.Thread] = []
        self.crashed: list[str] = []
        self.spool = config.state_dir / "received"  # the DICOM receiver's series folders
        self.receiver: Receiver | None = None
        self.watchdog = Watchdog.from_env()
        self.web_running = False  # set by the dashboard when it serves
        self._announced: Announced | None = None
        self._web: Any = None
        self._hub: Any = None  # edge.hub.server.HubHandle when [hub] listen is set
        self._secret: bytes | None = None

    # ---- life cycle ----

    def run(self, timeout_s: float | None = None) -> int:
        """Run until stopped (or, with once=True, until everything found has been sent).
        Returns 0, or 1 when once-mode ran out of time with work left or a stage crashed."""
        self._prepare()
        self._warm_up()
        self._check_disk()  # a full disk pauses ingest before the first slide is taken
        self._install_signals()
        if self.config.receiver.port:
            self.receiver = Receiver(self.config.receiver, self.spool)
            self.receiver.start()
        self._start_threads()
        self._start_web()
        self._watch_stages()
        self._announce()
        self._notify("READY=1")
        LOGGER.info(
            "edge running: watching %d folder(s), %d destination(s), state in %s",
            len(self.config.ingest.watch),
            len(self.config.destinations),
            self.config.state_dir,
        )
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_sweep = 0.0
        code = 0
        try:
            while not self.stop.is_set():
                self.health.beat("main")
                self._check_disk()
                if time.monotonic() - last_sweep >= HOUSEKEEPING_S:
                    last_sweep = time.monotonic()
                    self.sweep()
                self._notify(f"STATUS={self.status_line()}")
                if self.crashed:
                    LOGGER.error("stopping: stage(s) crashed: %s", ", ".join(self.crashed))
                    code = 1
                    break
                if self.once and self.idle():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    LOGGER.error("stopping: work left after %.0f s", timeout_s)
                    code = 1
                    break
                self.stop.wait(0.5)
        finally:
            self._notify("STOPPING=1")
            with JobStore(self.database) as jobs:  # before the exporter's last round
                jobs.audit("stop", detail=f"exit {code}")
            self.stop.set()
            self.wake.set()
            self.changed.set()
            self._wake_forwarders()
            if self.receiver is not None:
                self.receiver.stop()
            self.watchdog.stop()
            if self._announced is not None:
                self._announced.close()
            if self._web is not None:
                self._web.stop()
            if self._hub is not None:
                self._hub.stop()
            for thread in self._threads:
                thread.join(timeout=60)
        LOGGER.info("edge stopped")
        return code

    def _audit_start(self) -> None:
        """A start record with the configuration's fingerprint; a different fingerprint from
        the last start is a configuration change (who made it is the OS's to record)."""
        digest = hashlib.sha256(repr(self.config).encode()).hexdigest()[:16]
        conn = connect(self.database, readonly=True)
        try:
            row = conn.execute(
                "SELECT detail FROM audit WHERE action = 'start' ORDER BY id DESC LIMIT 1"
            ).fetchone()
        finally:
            conn.close()
        with JobStore(self.database) as jobs:
            if row is not None and not str(row[0]).endswith(f"config {digest}"):
                jobs.audit("config-change", detail=f"config {digest}")
            jobs.audit("start", detail=f"edge {__version__}, config {digest}")

    def _prepare(self) -> None:
        for folder in (self.config.state_dir, self.config.slides_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config.state_dir, 0o700)  # patient data: the service user's only
        if any(destination_policy(d) is not None for d in self.config.destinations):
            try:  # fail at start, not on the first slide
                self._secret = site_secret(self.config)
            except EdgeError as exc:
                raise cfg.ConfigError(str(exc)) from exc
        with JobStore(self.database) as jobs:
            recovered = jobs.recover()
        with Outbox(self.database) as outbox:
            resent = outbox.recover()
        if recovered or resent:
            LOGGER.info("recovered after a stop: %d job(s), %d delivery(ies)", recovered, resent)
        self._audit_start()
        for watched in self.config.ingest.watch:
            if not Path(watched).is_dir():
                LOGGER.warning("watch folder %s does not exist (yet); will keep looking", watched)

    def _warm_up(self) -> None:
        """Load the QC code and check the models now, not on the first slide: the first
        slide after a boot gets its verdict as soon as any other (about 0.5 s of imports
        here), and a model problem is in the log before a slide arrives."""
        if not self.config.pipeline.analyse:
            return
        for module in ("edge.analysis.api", "edge.dicom.results"):  # api loads the outputs
            importlib.import_module(module)
        from edge.dicom.results import warm_up

        warm_up()
        from edge.analysis.run import Analyser, QcUnavailable

        try:
            analyser = Analyser.create(analysis_options(self.config))
        except QcUnavailable as exc:
            LOGGER.warning("QC unavailable: %s (slides are still converted and sent)", exc)
            return
        models = ", ".join(f"{s.name} {s.version}" for s in analyser.specs.values())
        LOGGER.info("QC on %s: %s", analyser.backend, models)

    def _start_web(self) -> None:
        """The dashboard, in this process (it reads the state database and the health of the
        stages). Not in once-mode (a batch run has nobody watching); a port already taken is
        logged and the appliance runs on without it."""
        if not self.config.web.enabled or self.once:
            return
        from edge.web import serve

        try:
            self._web = serve(self.config, self.health)
        except EdgeError as exc:
            LOGGER.error("dashboard not started: %s", exc)
            return
        self.web_running = True
        LOGGER.info("dashboard on %s", self._web.url)

    def _watch_stages(self) -> None:
        """systemd's watchdog is pinged only while these stages beat: a converter stuck in a
        decoder or an ingest scan hung on a dead share gets the service restarted. Forwarders
        are not watched: one request may take many minutes on a slow link, and their network
        timeouts already bound them."""
        watched = {"main": 30.0, "ingest": self.config.ingest.poll_s + 120.0}
        for n in range(self.config.pipeline.slides_in_flight):
            watched[f"convert-{n + 1}"] = 300.0
        for stage, max_age_s in watched.items():
            self.watchdog.register(stage, max_age_s)

        def beat(stage: str) -> None:
            if stage in watched:
                self.watchdog.beat(stage)

        self.health.on_beat = beat
        self.watchdog.start()

    def _announce(self) -> None:
        """mDNS, so telepathology hubs and the site's IT find the box; only what peers could
        reach is announced (a dashboard on localhost is not)."""
        web_port = announceable_port(self.config.web.listen) if self.web_running else None
        receiver = self.config.receiver
        dicom_port = receiver.port if receiver.port and receiver.listen != "127.0.0.1" else 0
        if not web_port and not dicom_port:
            return
        try:
            self._announced = announce(
                Announcement(
                    instance=f"Edge WSI {socket.gethostname()}"[:63],
                    version=__version__,
                    web_port=web_port or 0,
                    dicom_aet=receiver.ae_title if dicom_port else "",
                    dicom_port=dicom_port,
                )
            )
        except Exception as exc:  # no multicast-capable interface: the box still works
            LOGGER.warning("mDNS announcement failed: %s", exc)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, _frame: FrameType | None) -> None:
            LOGGER.info("signal %d: finishing up", signum)
            self.stop.set()
            self.wake.set()
            self.changed.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _start_threads(self) -> None:
        if self.config.hub.listen:  # the hub role (docs/hub.md): its own port and threads
            from edge.hub.server import serve as serve_hub

            self._hub = serve_hub(self.config)
        self._spawn("ingest", self._ingest)
        self._spawn("inotify", self._notice_changes)
        for n in range(self.config.pipeline.slides_in_flight):
            self._spawn(f"convert-{n + 1}", self._convert)
        for dest in self.config.destinations:
            self._spawn(f"forward-{dest.name}", self._forward, dest)
        if self.config.audit.syslog:
            self._spawn("audit", self._export_audit)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except Exception:  # a bug in a stage: stop the daemon, systemd restarts it
                LOGGER.exception("stage %s crashed", name)
                self.crashed.append(name)
                self.stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ---- stages ----

    def _ingest(self) -> None:
        ingest = self.config.ingest
        # Scanner folders and the receiver's spool settle at their own pace: a DICOM scanner
        # pauses between levels longer than a file copy pauses between blocks.
        sources = [
            (
                [Path(p) for p in ingest.watch],
                Settler(folder_settle_s(ingest)),
                ingest.ready_marker,
            ),
        ]
        if self.config.receiver.port:
            sources.append(([self.spool], Settler(self.config.receiver.settle_s), ""))
        with JobStore(self.database) as jobs:
            known = jobs.fingerprints()
            while not self.stop.is_set():
                self.health.beat("ingest")
                fresh, settled = [], []
                for roots, settler, marker in sources:
                    seen = [
                        c
                        for c in scan(roots, ingest.extensions, marker)
                        if c.fingerprint not in known
                    ]
                    fresh += seen
                    settled += settler.settled(seen, time.monotonic())
                for candidate in settled:
                    job_id = jobs.add(candidate.path, candidate.fingerprint)
                    known.add(candidate.fingerprint)
                    if job_id is not None:
                        # The file name can carry patient identity: logs get the job id only.
                        LOGGER.info(
                            "job %d: slide found (%s, %.1f MB)",
                            job_id,
                            candidate.path.suffix.lower() or "DICOM folder",
                            candidate.signature[1] / 1e6,
                        )
                        self.wake.set()
                with self.health.lock:
                    self.health.settling = len(fresh) - len(settled)
                    self.health.scans += 1
                # A change seen by inotify cuts the wait; a settling slide is re-checked soon.
                wait = min(ingest.poll_s, 1.0) if fresh else ingest.poll_s
                self.changed.wait(wait)
                self.changed.clear()

    def _notice_changes(self) -> None:
        """inotify on the local watch folders (watchfiles): a new slide is seen at once rather
        than at the next poll. Shares give no events; the poll still finds everything."""
        roots = [p for p in self.config.ingest.watch if Path(p).is_dir()]
        if not roots:
            return
        try:
            for _changes in watchfiles.watch(
                *roots, stop_event=self.stop, rust_timeout=1000, yield_on_timeout=True
            ):
                self.health.beat("inotify")
                if _changes:
                    self.changed.set()
        except (OSError, RuntimeError) as exc:  # e.g. inotify watches exhausted: poll only
            LOGGER.warning(
                "folder events unavailable (%s); polling every %.0f s",
                exc,
                self.config.ingest.poll_s,
            )

    def _convert(self) -> None:
        names = [d.name for d in self.config.destinations]
        stage = threading.current_thread().name
        policy = RetryPolicy(base_s=self.config.retry_base_s, ceiling_s=self.config.retry_ceiling_s)
        with JobStore(self.database) as jobs, Outbox(self.database, policy=policy) as outbox:
            while not self.stop.is_set():
                self.health.beat(stage)
                if self.health.ingest_paused:
                    self.stop.wait(1.0)
                    continue
                job = jobs.claim()
                if job is None:
                    self.wake.wait(1.0)
                    self.wake.clear()
                    continue

                def progress(done: int, total: int) -> None:
                    self.health.beat(stage)
                    if self.stop.is_set():
                        raise Stopping(f"stopping after {done} of {total} tiles")

                def converted(files: list[Path], boost: int, job_id: int = job.id) -> None:
                    self._send_early(outbox, job_id, files, boost)

                started = time.monotonic()
                try:
                    output = process(job, self.config, progress, converted)
                    for targets, files in self._copies(job.id, output.files):
                        outbox.enqueue(
                            files, targets, f"job-{job.id}", priority_boost(output.job.priority)
                        )
                    self._wake_forwarders()
                except Stopping:
                    jobs.release(job.id)
                    LOGGER.info("job %d: back in the queue (stopping)", job.id)
                    return
                except InputError as exc:
                    jobs.quarantine(job.id, exc.problem)
                    self._quarantine_file(job.source)
                    LOGGER.warning("job %d: quarantined: %s", job.id, exc.problem)
                    continue
                except Exception as exc:  # a crash or an environment problem: retried
                    reason = f"{type(exc).__name__}: {exc}"
                    state = jobs.failed(job.id, reason, self.config.pipeline.max_attempts)
                    LOGGER.error("job %d: %s (%s)", job.id, reason, state)
                    continue
                jobs.finish(job.id, output.job)
                if job.source.is_relative_to(self.spool):
                    shutil.rmtree(job.source, ignore_errors=True)  # our copy, now converted
                LOGGER.info(
                    "job %d: %s in %.1f s, %d instance(s) queued%s",
                    job.id,
                    (output.job.verdict or "converted").upper(),
                    time.monotonic() - started,
                    len(output.files) if names else 0,
                    ", unmatched (no patient/order data)" if output.job.unmatched else "",
                )

    def _send_early(self, outbox: Outbox, job_id: int, files: list[Path], boost: int) -> None:
        """Queue a slide's converted instances while its QC is still being computed, so the
        PACS gets the pyramid seconds sooner; the QC objects follow when they exist. Only when
        no destination takes a de-identified copy (that copy is made of the finished folder).
        A restart re-queues the same paths: the outbox keeps one row per file."""
        if not files or any(destination_policy(d) for d in self.config.destinations):
            return
        names = [d.name for d in self.config.destinations]
        for targets, parts in self._parts(job_id, [(names, files)]):
            outbox.enqueue(parts, targets, f"job-{job_id}", boost)
        self._wake_forwarders()

    def _wake_forwarders(self) -> None:
        for event in self.queued.values():
            event.set()

    def _copies(self, job_id: int, files: list[Path]) -> list[tuple[list[str], list[Path]]]:
        """Which files go to which destinations: the identified slide to those that take it,
        one de-identified copy per distinct policy to the others (docs/privacy.md)."""
        if not files:
            return []
        plain = [d.name for d in self.config.destinations if destination_policy(d) is None]
        found: list[tuple[list[str], list[Path]]] = [(plain, files)] if plain else []
        groups: dict[Any, list[str]] = {}
        for dest in self.config.destinations:
            policy = destination_policy(dest)
            if policy is not None:
                groups.setdefault(policy, []).append(dest.name)
        for policy, targets in groups.items():
            assert self._secret is not None  # read at start whenever a policy exists
            folder = self.config.state_dir / "deid" / f"job-{job_id:06d}"
            copy = deidentify_slide(
                files[0].parent,
                folder / policy.uid_namespace.replace(":", "+"),
                policy,
                self._secret,
            )
            found.append((targets, copy))
        return self._parts(job_id, found)

    def _parts(
        self, job_id: int, found: list[tuple[list[str], list[Path]]]
    ) -> list[tuple[list[str], list[Path]]]:
        """Destinations with `max_instance_bytes` get large levels as concatenation parts
        (docs/sync.md): a dropped link then loses one part, not a whole level. An adaptive
        destination on a link that drops gets smaller parts (edge/sync/plan.py part_cap)."""
        out: list[tuple[list[str], list[Path]]] = []
        for targets, files in found:
            by_cap: dict[int, list[str]] = {}
            for name in targets:
                by_cap.setdefault(self._pinned_cap(job_id, name), []).append(name)
            for cap, names in by_cap.items():
                work = self.config.state_dir / "parts" / f"job-{job_id:06d}" / str(cap)
                dest = self.config.destination(names[0])
                out.append((names, prepare_for(dest, files, work, cap)))
        return out

    def _pinned_cap(self, job_id: int, name: str) -> int:
        """The part size of one job for one destination, chosen once and kept: part UIDs
        follow from it, so a second plan (the pyramid queued early, then the whole slide; a
        restart after a crash) must cut the same parts even if the link estimate moved."""
        dest = self.config.destination(name)
        pin = self.config.state_dir / "parts" / f"job-{job_id:06d}" / f"{name}.cap"
        with contextlib.suppress(OSError, ValueError):
            return int(pin.read_text())
        cap = part_cap(dest, link_request_bytes(dest, self.config.state_dir))
        pin.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(pin, str(cap).encode())
        return cap

    def _quarantine_file(self, source: Path) -> None:
        target = self.config.ingest.quarantine_dir
        if not target:
            return  # the source is never moved unless configured
        try:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(Path(target) / source.name))
        except OSError as exc:
            LOGGER.warning("cannot move a quarantined slide to %s: %s", target, exc)

    def _forward(self, dest_config: cfg.Destination) -> None:
        stage = threading.current_thread().name
        policy = RetryPolicy(base_s=self.config.retry_base_s, ceiling_s=self.config.retry_ceiling_s)
        breaker = CircuitBreaker(cooldown_s=min(60.0, self.config.retry_ceiling_s))
        with Outbox(self.database, policy=policy) as outbox:
            try:
                destination = factory.build(dest_config, self.config.state_dir)
                windows = factory.windows(dest_config)
            except cfg.ConfigError as exc:  # e.g. a credentials file missing: the others go on
                LOGGER.error("destination %s cannot start: %s", dest_config.name, exc)
                self.health.broken[dest_config.name] = str(exc)
                return
            try:
                while not self.stop.is_set():
                    self.health.beat(stage)
                    if outbox.is_paused(dest_config.name):  # paused on the dashboard
                        self.stop.wait(1.0)
                        continue

                    def nap(seconds: float) -> None:
                        self.health.beat(stage)
                        self.stop.wait(min(seconds, 1.0))

                    result = drain(
                        outbox,
                        destination,
                        batch_size=self.config.batch_size,
                        breaker=breaker,
                        deadline=time.time() + FORWARD_SLICE_S,
                        sleep=nap,
                        windows=windows,
                    )
                    if result.delivered or result.parked:
                        self._audit_sends(outbox, dest_config.name, result.delivered, result.parked)
                    if result.batches == 0:
                        queued = self.queued[dest_config.name]
                        queued.wait(0.5)
                        queued.clear()
            finally:
                destination.close()

    @staticmethod
    def _audit_sends(outbox: Outbox, destination: str, delivered: int, parked: int) -> None:
        with outbox.transaction() as conn:
            if delivered:
                record(conn, "send", destination=destination, detail=f"{delivered} instance(s)")
            if parked:
                record(
                    conn,
                    "park",
                    outcome="failure",
                    destination=destination,
                    detail=f"{parked} instance(s) parked",
                )

    def _export_audit(self) -> None:
        settings = self.config.audit
        host, _, port = settings.syslog.rpartition(":")
        collector = Collector(
            host, int(port), settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file
        )
        source = settings.source_id or socket.gethostname()
        conn = open_database(self.database)
        failing = False
        try:
            while not self.stop.is_set():
                self.health.beat("audit")
                try:
                    while export(conn, collector, source):
                        pass
                    if failing:
                        LOGGER.info("audit collector %s reachable again", collector.name)
                    failing = False
                except (OSError, ssl.SSLError) as exc:
                    if not failing:
                        LOGGER.warning("audit collector %s: %s (will retry)", collector.name, exc)
                    failing = True
                self.stop.wait(5.0)
            with contextlib.suppress(OSError, ssl.SSLError):
                export(conn, collector, source)  # the stop record, if the collector is there
        finally:
            conn.close()

    # ---- housekeeping and status ----

    def _check_disk(self) -> None:
        before = self.disk.state
        state = self.disk.check(self._disk_usage(self.config.slides_dir))
        if state is before:
            return
        if state.ingest_allowed:
            self.health.ingest_paused = ""
        else:
            used = self._disk_usage(self.config.slides_dir).used_fraction
            self.health.ingest_paused = (
                f"disk {used:.0%} full ({state.name.lower()}; high-water mark "
                f"{self.config.storage.high_water:.0%}); unsent slides are kept, delivered "
                "ones are removed after retention"
            )
            self.sweep()

    def sweep(self) -> int:
        """Remove delivered files past retention (never anything unsent)."""
        retention_s = self.config.storage.retention_days * 86400.0
        with Outbox(self.database) as outbox:
            removed = outbox.purge_delivered(retention_s)
            removed += self._leftovers(retention_s)
            if removed:
                with outbox.transaction() as conn:
                    record(conn, "delete", detail=f"{len(removed)} delivered file(s), retention")
        for folder in {p.parent for p in removed}:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the QC folder and reports stay
        if removed:
            LOGGER.info("retention: removed %d delivered file(s)", len(removed))
        return len(removed)

    def _leftovers(self, retention_s: float) -> list[Path]:
        """Files of a fully delivered job that no destination received as such (a level sent
        as concatenation parts, a slide only de-identified copies of went out): removed with
        the rest, or a site whose every destination is capped would fill its disk."""
        removed: list[Path] = []
        with JobStore(self.database) as jobs:
            retired = jobs.retired(time.time() - retention_s)
        for job in retired:
            if not job["delivered"]:
                continue
            for path in Path(job["output"]).glob("*.dcm"):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
        return removed

    def idle(self) -> bool:
        """Nothing left to find, convert or send (once-mode's end)."""
        with self.health.lock:
            if self.health.scans < 2 or self.health.settling:
                return False
        counts = self._job_counts()
        if counts["queued"] or counts["running"]:
            return False
        reader = OutboxReader(self.database)
        try:
            per = reader.stats()["destinations"]
        finally:
            reader.close()
        return all(c["queued"] + c["sending"] + c["failed"] == 0 for c in per.values())

    def _job_counts(self) -> dict[str, int]:
        conn = connect(self.database, readonly=True)
        try:
            return job_counts(conn)
        finally:
            conn.close()

    def status_line(self) -> str:
        counts = self._job_counts()
        paused = " (ingest paused: disk full)" if self.health.ingest_paused else ""
        return (
            f"{counts['done']} done, {counts['queued'] + counts['running']} in progress, "
            f"{counts['quarantined'] + counts['failed']} need attention{paused}"
        )


def embedded_defaults(home: Path) -> cfg.Config:
    """A working appliance with no configuration file: everything under `home`; the dashboard
    on localhost, viewable there without a login (actions still need one)."""
    return cfg.Config(
        state_dir=home / "state",
        web=cfg.Web(open_view=True),
        ingest=cfg.Ingest(watch=(str(home / "inbox"),), settle_s=2.0, poll_s=1.0),
        destinations=(cfg.Destination(name="local", kind="folder", path=str(home / "outgoing")),),
    )
