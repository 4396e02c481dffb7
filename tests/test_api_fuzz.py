"""Schemathesis against the server's own `/openapi.json` (issue 27): requests generated from the document,
valid and invalid, to every operation; each answer must not be a server error and must match the document
(status documented, content type, body schema). Bounded: a few examples per operation, about a minute on two
cores."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    not_a_server_error,
)
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nq_dagster.serve.http.app import create_server  # noqa: E402
from nq_dagster.serve.keys import KeyStore  # noqa: E402
from nq_dagster.settings import Settings  # noqa: E402

CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz") / "nq"
    srv = create_server(Settings(home=home))
    key = KeyStore(home).create("admin", "1000000/s", 100_000, 1000, "fuzz")[0]
    return srv, key


def test_every_operation_answers_as_documented(served):
    srv, key = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", srv.app)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def run(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - every operation's failure, then one assertion
            failures.append(f"{operation.label}: {exc}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
