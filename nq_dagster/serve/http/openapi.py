"""The OpenAPI 3.1 document of the server, generated from the pydantic models of the request bodies
(`bodies.py`) and the answers (`schemas.py`): one `Operation` per route, its role, parameters, body and
answers, each error with an example in the one error shape. `document(routes)` refuses an app route the table
does not describe (and a described route the app lacks), so the document cannot fall behind the routes.

OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what pydantic writes: the models' schemas go into
`components/schemas` as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Mount, Route

import nq_dagster
from nq_dagster.serve.http import schemas as s
from nq_dagster.serve.http.bodies import Subscription
from nq_dagster.serve.http.operations import (
    COMMON_ERRORS,
    DESCRIPTION,
    OPERATIONS,
    RECORD_EXAMPLE,
    ROLE_NOTE,
    Operation,
    error_example,
)


def _components() -> tuple[dict, dict]:
    """(the $ref of each model, the components' schemas)."""
    answers = {m for op in OPERATIONS for m, _ in op.ok.values() if m is not None}
    answers |= {s.ErrorAnswer, s.Subscribed, s.BatchMessage, s.Outcome, s.PredictionList, s.StatusPublic}
    bodies = {op.body for op in OPERATIONS if op.body is not None} | {Subscription}
    models = [(m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)]
    models += [(m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)]
    refs, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return {m: ref for (m, _), ref in refs.items()}, defs.get("$defs", {})


def _error_answer(code: int, message: str) -> dict:
    example = error_example(message)
    example["error"]["code"] = code
    return {
        "description": message if code < 500 else "server error: the message names the request id",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}, "example": example}
        },
    }


def _operation(op: Operation, refs: dict) -> dict:
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": (op.method + op.path)
        .lower()
        .replace("/", "_")
        .replace("{", "")
        .replace("}", "")
        .strip("_"),
        "tags": [op.tag],
        "description": (op.description + "\n\n" if op.description else "") + f"Access: {ROLE_NOTE[op.role]}.",
    }
    if op.role is not None:
        out["security"] = [{"bearer": []}]
        out["x-role"] = op.role
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": p.schema,
                "description": p.description,
            }
            for p in op.params
        ]
    if op.body is not None or op.body_example is not None:
        schema = refs[op.body] if op.body is not None else {"type": "object"}
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": op.body_example}},
        }
    answers: dict[str, Any] = {}
    for code, (model, what) in op.ok.items():
        if model is None:
            content = {
                op.media: {
                    "schema": {"type": "string"} if op.media != "application/json" else {"type": "object"}
                }
            }
        else:
            content = {op.media: {"schema": refs[model]}}
        if model is s.PredictionRecord:
            content[op.media]["example"] = RECORD_EXAMPLE
        answers[str(code)] = {"description": what, "content": content}
    errors = dict(COMMON_ERRORS) if op.role is not None else {}
    errors.update(op.errors)
    errors[500] = "internal server error; the server log has the details"
    for code, message in sorted(errors.items()):
        answers[str(code)] = _error_answer(code, message)
    if op.path == "/api/v1/status":
        answers["200"]["content"]["application/json"]["schema"] = {
            "anyOf": [refs[s.Status], refs[s.StatusPublic]]
        }
        answers["503"]["content"]["application/json"]["schema"] = {
            "anyOf": [refs[s.Status], refs[s.StatusPublic]]
        }
        answers["503"]["content"]["application/json"].pop("example")
    if op.path == "/livez":
        answers["503"] = {
            "description": "dead: restart the process",
            "content": {"application/json": {"schema": refs[s.Live]}},
        }
    if op.path == "/readyz":
        answers["503"] = {
            "description": "not ready: `missing` says why",
            "content": {"application/json": {"schema": refs[s.Ready]}},
        }
    if op.path == "/api/v1/process/realtime":
        answers["200"]["content"]["application/json"]["schema"] = {
            "anyOf": [refs[s.PredictionRecord], refs[s.PredictionList]]
        }
    out["responses"] = answers
    return out


def app_operations(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(method, path) of every HTTP route of the app (the static files' mount and WebSockets aside)."""
    return {
        (m, r.path)
        for r in routes
        if isinstance(r, Route) and not isinstance(r, Mount)
        for m in (r.methods or ())
        if m != "HEAD"
    }


def document(routes: list[BaseRoute]) -> dict:
    """The OpenAPI 3.1 document of an app with these routes."""
    described = {(op.method, op.path) for op in OPERATIONS}
    served = app_operations(routes)
    if described != served:
        raise RuntimeError(
            f"openapi.OPERATIONS and the app's routes differ: undocumented {sorted(served - described)}, "
            f"documented but not served {sorted(described - served)}"
        )
    refs, schemas = _components()
    paths: dict[str, dict] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nq-dagster prediction server",
            "version": nq_dagster.__version__,
            "description": DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key `nq_<id>_<secret>`, or an OAuth 2.0 JWT (RS256/ES256) when "
                    "configured",
                }
            },
        },
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPERATIONS)],
    }
