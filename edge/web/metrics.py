"""/metrics (Prometheus text format), /healthz (the process answers) and /readyz (the state
database is readable). Metrics carry counts only, never slide names, so they need no login."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge import config as cfg
from edge.jobs import job_counts
from edge.outbox import queries
from edge.web import data, status

router = APIRouter(tags=["health"])


class StateCollector(Collector):
    """Read on every scrape from a read-only connection; nothing is counted in memory."""

    def __init__(self, config: cfg.Config, health: Any) -> None:
        self.config = config
        self.health = health

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("edge_state_readable", "1 when the state database is readable")
        try:
            with data.reader(self.config) as conn:
                counts = job_counts(conn)
                stats = queries.stats(conn)
                health = status.destination_health(conn)
                done_hour, read_hour, seconds_hour = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(bytes_in), 0), COALESCE(SUM(seconds), 0) "
                    "FROM jobs WHERE state = 'done' AND finished_at >= ?",
                    (time.time() - 3600,),
                ).fetchone()
                sent = conn.execute(
                    "SELECT d.destination, COALESCE(SUM(CASE WHEN d.state = 'delivered' "
                    "THEN i.size END), 0), COALESCE(SUM(MAX(d.attempts - 1, 0)), 0) "
                    "FROM deliveries d JOIN instances i ON i.id = d.instance_id "
                    "GROUP BY d.destination"
                ).fetchall()
        except (data.NotReady, Exception):  # a scrape must answer even when the db is gone
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("edge_jobs", "slide jobs by state", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        hour = GaugeMetricFamily("edge_slides_done_last_hour", "slides finished in the last hour")
        hour.add_metric([], int(done_hour))
        yield hour
        for name, value, doc in (
            ("edge_slide_bytes_read_last_hour", read_hour, "scanner bytes of those slides"),
            ("edge_slide_seconds_last_hour", seconds_hour, "conversion seconds spent on them"),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge
        delivered = GaugeMetricFamily(
            "edge_outbox_delivered_bytes",
            "bytes delivered per destination (rows kept)",
            labels=["destination"],
        )
        retries = GaugeMetricFamily(
            "edge_outbox_retries",
            "send attempts beyond the first, per destination",
            labels=["destination"],
        )
        for dest, sent_bytes, extra in sent:
            delivered.add_metric([dest], int(sent_bytes))
            retries.add_metric([dest], int(extra))
        yield delivered
        yield retries
        dels = GaugeMetricFamily(
            "edge_outbox_deliveries",
            "outbox rows by destination and state",
            labels=["destination", "state"],
        )
        for dest, per in stats["destinations"].items():
            for state, n in per.items():
                dels.add_metric([dest, state], n)
        yield dels
        for name, key, doc in (
            ("edge_outbox_unsent_bytes", "unsent_bytes", "bytes not yet delivered everywhere"),
            ("edge_outbox_unsent_instances", "unsent_instances", "instances not yet delivered"),
            ("edge_outbox_instances", "instances", "instances in the outbox"),
            ("edge_outbox_bytes", "bytes", "bytes of the instances in the outbox"),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], stats[key])
            yield gauge
        last = GaugeMetricFamily(
            "edge_destination_last_success_timestamp_seconds",
            "Unix time of the last delivery per destination",
            labels=["destination"],
        )
        for dest, h in health.items():
            if h.get("last_success_at"):
                last.add_metric([dest], float(h["last_success_at"]))
        yield last
        paused = GaugeMetricFamily("edge_ingest_paused", "1 while ingest is paused (disk)")
        paused.add_metric([], 1 if getattr(self.health, "ingest_paused", "") else 0)
        yield paused
        beats = getattr(self.health, "beats", None)
        if beats:
            age = GaugeMetricFamily(
                "edge_stage_heartbeat_age_seconds",
                "seconds since a stage last beat",
                labels=["stage"],
            )
            now = time.monotonic()
            for stage, at in dict(beats).items():
                age.add_metric([stage], round(now - at, 3))
            yield age


def registry_for(config: cfg.Config, health: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(config, health))
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "registry", None) is None:
        state.registry = registry_for(state.config, state.health)
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "state database not readable"}})
def readyz(request: Request) -> Response:
    """The state database can be read (503 with the reason otherwise)."""
    try:
        with data.reader(request.app.state.config) as conn:
            conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
    except data.NotReady as exc:
        return JSONResponse({"status": "not ready", "detail": str(exc)}, status_code=503)
    except Exception as exc:  # a damaged file: say so rather than 500
        return JSONResponse({"status": "not ready", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready"})
