"""`tools/bench web`: dashboard latency over a big state database.

Fills a fresh state database (the real schema, through edge.outbox.schema.open_database)
with SLIDES finished jobs and INSTANCES queued instances (one delivery each), starts the
dashboard with edge.web.serve on a free port, logs in a user and times sequential requests
(keep-alive, one client) per endpoint; reports p50 / p95 / max in milliseconds.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from edge import config as cfg
from edge.outbox.schema import DATABASE, open_database
from edge.web import serve
from edge.web.app import users_path
from edge.web.auth import Users

TARGET_MS = 100.0
PASSWORD = "bench-password"


def fill(state_dir: Path, slides: int, instances: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    conn = open_database(state_dir / DATABASE)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    verdicts = ("pass", "pass", "pass", "review", "rescan")
    states = ("done",) * 17 + ("queued", "failed", "quarantined")
    conn.executemany(
        "INSERT INTO jobs (source, fingerprint, name, state, created_at, updated_at, "
        "finished_at, verdict, reasons, stain, priority, instances, bytes_in, seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                f"/scanner/S{n:06d}.svs",
                f"fp-{n}",
                f"S{n:06d}.svs",
                state := rng.choice(states),
                now - (slides - n) * 30,
                now - (slides - n) * 30,
                now - (slides - n) * 30 + 25 if state == "done" else None,
                verdict := rng.choice(verdicts) if state == "done" else "",
                json.dumps(["clean the slide and rescan: pen"] if verdict == "rescan" else []),
                rng.choice(("H&E", "IHC", "")),
                rng.randint(0, 100),
                10,
                300_000_000,
                25.0,
            )
            for n in range(1, slides + 1)
        ],
    )
    per_slide = max(1, instances // slides)
    conn.executemany(
        "INSERT INTO instances (path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, "
        "size, study_uid, series_uid, slide_key, priority, enqueued_at) "
        "VALUES (?, '1.2.840.10008.5.1.4.1.1.77.1.6', ?, '1.2.840.10008.1.2.4.50', ?, ?, ?, ?, "
        "50, ?)",
        [
            (
                f"/var/lib/edge/slides/{i}.dcm",
                f"2.25.{i}",
                30_000_000,
                f"2.25.9{i // per_slide}",
                f"2.25.8{i // per_slide}",
                f"job-{i // per_slide + 1}",
                now,
            )
            for i in range(instances)
        ],
    )
    conn.execute(
        "INSERT INTO deliveries (instance_id, destination, state, updated_at) "
        "SELECT id, 'pacs', 'queued', ? FROM instances",
        (now,),
    )
    conn.execute("COMMIT")
    conn.close()


def _time(client: httpx.Client, path: str, runs: int) -> dict[str, float]:
    client.get(path)  # warm: templates compiled, pages cached by SQLite
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text[:200]}")
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p95": samples[max(0, round(0.95 * len(samples)) - 1)],
        "max": samples[-1],
    }


def run(workdir: Path, slides: int, instances: int, runs: int) -> tuple[str, bool]:
    state = workdir / "state"
    if state.exists():
        for child in state.iterdir():
            child.unlink()
    state.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fill(state, slides, instances)
    filled = time.perf_counter() - started
    config = cfg.Config(
        state_dir=state, destinations=(cfg.Destination("pacs", "folder", path="/x"),)
    )
    Users(users_path(config)).add("bench", "technician", PASSWORD)
    handle = serve(config, listen="127.0.0.1:0")
    paths = {
        "slides page": "/slides",
        "slides page, filtered": "/slides?verdict=rescan&q=S00",
        "API jobs list": "/api/v1/jobs?limit=50",
        "slide detail": f"/slides/{slides // 2}",
        "overview": "/",
        "API stats": "/api/v1/stats",
        "metrics": "/metrics",
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            form = client.get("/login").text
            token = re.search(r'name="login_token" value="([^"]+)"', form)
            assert token is not None
            client.post(
                "/login",
                data={"username": "bench", "password": PASSWORD, "login_token": token[1]},
            )
            for name, path in paths.items():
                results[name] = _time(client, path, runs)
    finally:
        handle.stop()
    rows = [
        f"{slides:,} slides, {instances:,} queued instances (database filled in {filled:.1f} s); "
        f"{runs} sequential requests per endpoint, one keep-alive client, after one warm-up.",
        "",
        "| endpoint | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} (`{paths[name]}`) | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} |"
        )
    ok = all(results[k]["p95"] < TARGET_MS for k in ("slides page", "API jobs list"))
    rows.append("")
    rows.append(
        f"Target (p95 of the slides page and the API list under {TARGET_MS:.0f} ms): "
        + ("met" if ok else "NOT met")
    )
    return "\n".join(rows), ok
