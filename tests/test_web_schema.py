"""schemathesis against the dashboard's own /openapi.json, over a real daemon run through a
live server: generated requests (valid and invalid) never get a 5xx and every response
matches the schema."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import config as cfg
from edge.web import serve
from edge.web.app import create_app, users_path
from edge.web.auth import Users
from tests.web_state import build, daemon_config

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def _schema() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:  # the schema does not depend on the data
        return create_app(cfg.Config(state_dir=Path(tmp))).openapi()


schema = schemathesis.openapi.from_dict(_schema())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("web-schema")
    build(home)
    config = daemon_config(home)
    token = Users(users_path(config)).add_token("schemathesis", "admin")
    handle = serve(config, listen="127.0.0.1:0")
    try:
        yield {"url": handle.url, "auth": {"Authorization": f"Bearer {token}"}}
    finally:
        handle.stop()


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms(case: Any, site: dict[str, Any]) -> None:
    case.call_and_validate(
        base_url=site["url"],
        headers=site["auth"],
        checks=[
            not_a_server_error,
            response_schema_conformance,
            status_code_conformance,
            content_type_conformance,
        ],
    )
