"""sd_notify without libsystemd: readiness, status, stopping and watchdog pings.

systemd hands a Type=notify service the path of a datagram socket in $NOTIFY_SOCKET; each
message is one datagram of newline-separated KEY=VALUE lines. A leading '@' means the Linux
abstract namespace. Outside systemd (tests, a shell) the variable is unset and every call is
a no-op that returns False, so the daemon never needs to know how it was started.

`Heartbeats` is the pure liveness rule (which stages are stale at a given instant);
`Watchdog` combines it with a `Notifier` and a clock so that systemd is pinged only while
every registered stage is alive: a stuck converter stops the pings and systemd restarts the
service (WatchdogSec= in systemd/edge.service).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge.errors import EdgeError

LOGGER = logging.getLogger(__name__)


class NotifyError(EdgeError):
    """$NOTIFY_SOCKET or $WATCHDOG_USEC holds something this module cannot use."""


def socket_address(value: str) -> str | bytes:
    """The sendto() address for a $NOTIFY_SOCKET value ('@name' -> abstract b'\\0name')."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd 254+ may also hand out vsock: addresses (for VMs); an appliance never gets one.
    raise NotifyError(
        f"NOTIFY_SOCKET={value!r}: expected an absolute path or '@abstract-name' (AF_UNIX)"
    )


def watchdog_interval_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds within which systemd expects a WATCHDOG=1, or None when no watchdog applies.

    $WATCHDOG_PID, when set, names the process the watchdog is meant for; a child that
    inherited the environment must not ping on its parent's behalf (sd_watchdog_enabled(3)).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        raise NotifyError(
            f"WATCHDOG_USEC={usec!r}: expected a whole number of microseconds"
        ) from None
    if value <= 0:
        raise NotifyError(f"WATCHDOG_USEC={usec!r}: expected a positive number of microseconds")
    return value / 1_000_000


class Notifier:
    """Sends notification datagrams to one socket; `Notifier(None)` drops everything."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        value = env.get("NOTIFY_SOCKET", "")
        return cls(socket_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send KEY=VALUE lines as one datagram; False when disabled or the send failed.

        A failure is logged and swallowed: systemd being briefly unreachable must not take
        the pipeline down (a missing watchdog ping is systemd's to act on).
        """
        if self.address is None:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(payload, self.address)
            except OSError as exc:
                LOGGER.warning("sd_notify to %r failed: %s", self.address, exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog_ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more start/stop time from now (e.g. a TensorRT engine build
        before READY=1); send it again before it runs out for longer work."""
        return self.send(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment inside the datagram.
    return " ".join(text.split())


_DEFAULT: Notifier | None = None


def default() -> Notifier:
    """The process-wide notifier built from $NOTIFY_SOCKET on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        try:
            _DEFAULT = Notifier.from_env()
        except NotifyError as exc:
            # Never fail the daemon over how systemd can be reached; run unnotified.
            LOGGER.warning("sd_notify disabled: %s", exc)
            _DEFAULT = Notifier(None)
    return _DEFAULT


def ready(status: str | None = None) -> bool:
    return default().ready(status)


def status(text: str) -> bool:
    return default().status(text)


def stopping(status: str | None = None) -> bool:
    return default().stopping(status)


def watchdog_ping() -> bool:
    return default().watchdog_ping()


def extend_timeout(seconds: float) -> bool:
    return default().extend_timeout(seconds)


@dataclass(frozen=True)
class Stale:
    """A stage that missed its heartbeat: its name and seconds since the last beat."""

    stage: str
    age_s: float
    max_age_s: float


class Heartbeats:
    """Which stages are alive: pure bookkeeping over times the caller supplies.

    Each stage registers with the longest silence it may keep (`max_age_s`): an idle stage
    beats when its queue wait times out, a busy one after each tile batch or instance. A
    stage that finishes on purpose unregisters so its silence is not taken for a hang.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def register(self, stage: str, max_age_s: float, now: float) -> None:
        if max_age_s <= 0:
            raise ValueError(f"stage {stage!r}: max_age_s must be positive, got {max_age_s}")
        with self._lock:
            self._limits[stage] = max_age_s
            self._last[stage] = now

    def unregister(self, stage: str) -> None:
        with self._lock:
            self._limits.pop(stage, None)
            self._last.pop(stage, None)

    def beat(self, stage: str, now: float) -> None:
        with self._lock:
            if stage not in self._limits:
                raise KeyError(f"heartbeat from unregistered stage {stage!r}")
            self._last[stage] = now

    def stale(self, now: float) -> list[Stale]:
        """The stages silent for longer than they may be, oldest first."""
        with self._lock:
            late = [
                Stale(name, now - self._last[name], limit)
                for name, limit in self._limits.items()
                if now - self._last[name] > limit
            ]
        return sorted(late, key=lambda s: -s.age_s)

    def stages(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._limits))


class Watchdog:
    """Pings systemd's watchdog while every registered stage is alive.

    `tick()` is the whole decision (testable with a fake clock); `start()` runs it on a
    thread every half watchdog interval, as sd_watchdog_enabled(3) recommends. Without a
    watchdog ($WATCHDOG_USEC unset) it still tracks stages, so the dashboard can show them.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self.clock = clock
        self.heartbeats = Heartbeats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Watchdog:
        """The watchdog systemd asked for (shares the process-wide notifier by default)."""
        notifier = default() if env is None else Notifier.from_env(env)
        return cls(notifier, watchdog_interval_s(env))

    def register(self, stage: str, max_age_s: float) -> None:
        self.heartbeats.register(stage, max_age_s, self.clock())

    def unregister(self, stage: str) -> None:
        self.heartbeats.unregister(stage)

    def beat(self, stage: str) -> None:
        self.heartbeats.beat(stage, self.clock())

    def tick(self) -> bool:
        """Ping if every stage is alive; return whether it pinged (False also when disabled)."""
        late = self.heartbeats.stale(self.clock())
        names = frozenset(s.stage for s in late)
        if names != self._reported:
            # Log transitions only, not every tick, so a hang is one line in the journal.
            for s in late:
                LOGGER.error(
                    "stage %s silent for %.0f s (allowed %.0f s): withholding watchdog ping",
                    s.stage,
                    s.age_s,
                    s.max_age_s,
                )
            if not late:
                LOGGER.info("all stages alive again; watchdog pings resume")
            self._reported = names
        if late or self.interval_s is None:
            return False
        return self.notifier.watchdog_ping()

    def start(self) -> None:
        if self.interval_s is None or self._thread is not None:
            return
        period = self.interval_s / 2

        def run() -> None:
            while not self._stop.wait(period):
                self.tick()

        self.tick()
        self._thread = threading.Thread(target=run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
