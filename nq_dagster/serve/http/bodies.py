"""Request bodies as pydantic models, and the translation of their validation errors into the API's error
answer: status 422 (413 for a size limit), `field` the path of the offending part (`data[1]`,
`data_points[0].value`, `config.priority`) and a message that says what was expected there.

`parse(model, raw, **limits)` validates a raw body in one pass (JSON parsing included); limits that come from
the server's settings (`max_values`, `max_points`, `callback_hosts`) travel in the validation context. Rules
that span fields (one timestamp per value) raise a `BodyError` naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nq_dagster.serve.http import strictjson
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.keys import ROLES
from nq_dagster.store import SOURCE_RE

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
CALLBACK_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
BODY_ERROR = "nq_body"  # the error type of a rule stated here: its context has the field, message and status


def body_error(field: str, message: str, status: int = 422) -> PydanticCustomError:
    ctx = {"field": field, "message": message, "status": status}
    return PydanticCustomError(BODY_ERROR, "{message}", ctx)


def _number(v: Any) -> int | float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    raise PydanticCustomError("number", "expected a number")


def _timestamp(v: Any) -> str | int | float:
    if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return v
    raise PydanticCustomError("timestamp", "expected a string or a number")


# a JSON number (not a boolean), kept as sent: an int stays an int
Number = Annotated[float, PlainValidator(_number, json_schema_input_type=float)]
# ISO 8601, or epoch seconds / milliseconds
Timestamp = Annotated[str, PlainValidator(_timestamp, json_schema_input_type=str | float)]


class Body(BaseModel):
    """A request body; `EXPECTED[field pattern]` words what a field must be (indices written `[]`)."""

    model_config = ConfigDict(extra="ignore")
    EXPECTED: ClassVar[dict[str, str]] = {}


class RealtimeOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    neuromorphic_enabled: StrictBool = True  # false: its results left out of the answer
    quantum_enabled: StrictBool = True
    priority: Literal["low", "normal", "high"] = "normal"


class RealtimeBody(Body):
    """`POST /api/v1/process/realtime`: one source's values, with `timestamp` (one value) or `timestamps`."""

    EXPECTED: ClassVar[dict[str, str]] = {
        "source": "required, a string",
        "data": "required, a non-empty list of numbers",
        "data[]": "expected a number, got {type} {input}",
        "timestamps": "one per value",
        "timestamp": "expected a string or a number, got {type}",
        "timestamps[]": "expected a string or a number, got {type}",
        "config": "expected an object",
        "config.neuromorphic_enabled": "expected true or false",
        "config.quantum_enabled": "expected true or false",
        "config.priority": "one of low, normal, high",
    }
    source: StrictStr
    data: list[Number] = Field(min_length=1)
    timestamp: Timestamp | None = None
    timestamps: list[Timestamp] | None = None
    config: RealtimeOptions = RealtimeOptions()

    @field_validator("source")
    @classmethod
    def _source_name(cls, v: str) -> str:
        if not SOURCE_RE.match(v):
            raise body_error(
                "source",
                f"source name {v!r} is not valid: use 1-64 letters, digits, '_', "
                "'-' or '.', starting with a letter or digit",
            )
        return v

    @field_validator("data", mode="before")
    @classmethod
    def _not_too_many(cls, v: Any, info: ValidationInfo) -> Any:
        most = (info.context or {}).get("max_values")
        if most is not None and isinstance(v, list) and len(v) > most:
            raise body_error(
                "data",
                f"data: {len(v)} values, at most {most} per request; use /api/v1/process/batch",
                status=413,
            )
        return v

    @model_validator(mode="after")
    def _one_timestamp_per_value(self) -> RealtimeBody:
        n = len(self.data)
        if "timestamps" in self.model_fields_set:
            if self.timestamps is None or len(self.timestamps) != n:
                raise body_error("timestamps", f"timestamps: one per value ({n})")
        elif "timestamp" in self.model_fields_set:
            if n != 1:
                raise body_error(
                    "timestamp", f"timestamp: one timestamp for {n} values; send `timestamps`, one per value"
                )
            if self.timestamp is None:
                raise body_error("timestamp", "timestamps[0]: expected a string or a number, got NoneType")
        else:
            raise body_error(
                "timestamp",
                "timestamp: required (ISO 8601 or epoch seconds/milliseconds); the "
                "same tick posted again is recognised by its timestamp",
            )
        return self

    def ticks(self) -> list[tuple]:
        """(source, timestamp, value) per value, as the engine takes them."""
        ts = self.timestamps if "timestamps" in self.model_fields_set else [self.timestamp]
        return [(self.source, t, v) for t, v in zip(ts, self.data, strict=True)]

    def omitted(self) -> list[str]:
        """The results the client asked to leave out of the answer."""
        return [
            k
            for k, on in (
                ("neuromorphic_results", self.config.neuromorphic_enabled),
                ("quantum_results", self.config.quantum_enabled),
            )
            if not on
        ]


class JobRef(Body):
    """The `job_id` of a batch body (a job posted again is answered from the first one, whatever it holds)."""

    job_id: Any = None

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: Any) -> Any:
        if v and not (isinstance(v, str) and JOB_ID_RE.match(v)):
            raise body_error("job_id", "job_id: 1-64 letters, digits, '_' or '-'")
        return v or None


class DataPoint(BaseModel):
    source: StrictStr
    timestamp: Timestamp
    value: Number


class BatchBody(Body):
    """`POST /api/v1/process/batch`: data points of many sources, an optional callback."""

    EXPECTED: ClassVar[dict[str, str]] = {
        "data_points": "required, a non-empty list of {{source, timestamp, value}}",
        "data_points[]": "expected an object",
        "data_points[].source": "required, a string",
        "data_points[].timestamp": "required, a string or a number",
        "data_points[].value": "required, a number",
    }
    data_points: list[DataPoint] = Field(min_length=1)
    callback_url: str | None = None

    @field_validator("data_points", mode="before")
    @classmethod
    def _not_too_many(cls, v: Any, info: ValidationInfo) -> Any:
        most = (info.context or {}).get("max_points")
        if most is not None and isinstance(v, list) and len(v) > most:
            raise body_error(
                "data_points", f"data_points: {len(v)} points, at most {most} per job", status=413
            )
        return v

    @field_validator("callback_url", mode="before")
    @classmethod
    def _allowed_host(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        hosts = tuple((info.context or {}).get("callback_hosts", ()))
        if not isinstance(v, str):
            raise body_error("callback_url", "callback_url: expected a string (an http or https URL)")
        if len(v) > 2048 or CALLBACK_UNSAFE.search(v):
            # control characters, spaces and backslashes are read differently by different URL parsers
            raise body_error(
                "callback_url",
                "callback_url: at most 2,048 characters, no control characters, spaces or '\\'",
            )
        try:
            u = urlparse(v)
            host = (u.hostname or "").lower()
            u.port  # noqa: B018 - raises for a port that is not a number
        except ValueError as exc:  # `http://[127.0.0.1]@host/`: "Invalid IPv6 URL"
            raise body_error("callback_url", f"callback_url: not a valid URL ({exc})") from None
        if "@" in u.netloc:
            # `user@host` URLs: what a reader takes for the host is not always what the client connects to
            raise body_error("callback_url", "callback_url: user information (`...@`) is not allowed")
        if not u or u.scheme not in ("http", "https") or host not in hosts:
            allowed = ", ".join(hosts) or "empty"
            raise body_error(
                "callback_url",
                f"callback_url: host {host or v!r} is not on the callback "
                f"allow-list ({allowed}; `callback_hosts` in "
                "serve/settings.json)",
            )
        return v

    def ticks(self) -> list[tuple]:
        return [(p.source, p.timestamp, p.value) for p in self.data_points]


class NewKey(Body):
    """`POST /api/v1/keys`."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)
    EXPECTED: ClassVar[dict[str, str]] = {
        "role": f"one of {', '.join(ROLES)}",
        "rate": "N/s, N/min or N/h, e.g. 600/min",
        "burst": "an integer, at least 1",
        "max_concurrent": "an integer, at least 1",
        "name": "a string",
        "tenant": "a tenant name: 1-32 letters, digits, '_' or '-'",
    }
    role: Literal["viewer", "developer", "admin"]
    rate: str = "600/min"  # N/s, N/min or N/h
    burst: int = Field(50, ge=1)
    max_concurrent: int = Field(32, ge=1)
    name: str = ""
    tenant: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$",
        description="the tenant the key belongs to (only the platform's administrator names one; a tenant's "
        "admin creates keys of its own tenant); none: the default namespace",
    )


class Filters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    min_confidence: Number = 0.0
    directions: list[Literal["up", "down", "hold"]] | None = Field(
        None, max_length=3
    )  # none: every direction


class Subscription(BaseModel):
    """A WebSocket subscription's sources (none: every source served) and filters."""

    model_config = ConfigDict(extra="ignore")
    sources: list[Annotated[StrictStr, Field(max_length=64)]] | None = Field(None, max_length=1_000)
    filters: Filters | None = None


def field_of(loc: tuple) -> str:
    """('data_points', 0, 'value') -> 'data_points[0].value'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error(model: type[BaseModel], err: dict) -> ApiError:
    if err["type"] == BODY_ERROR:
        ctx = err["ctx"]
        return ApiError(ctx["status"], ctx["message"], field=ctx["field"])
    loc = err["loc"]
    if not loc:
        if err["type"] == "json_invalid":
            why = err["msg"].removeprefix("Invalid JSON: ")
            return ApiError(422, f"body is not valid JSON: {why}", field="body")
        return ApiError(422, f"body must be a JSON object, got {type(err['input']).__name__}", field="body")
    field = field_of(loc)
    pattern = re.sub(r"\[\d+\]", "[]", field)
    expected = getattr(model, "EXPECTED", {}).get(pattern)
    if expected is None:
        return ApiError(422, f"{field}: {err['msg']}", field=field)
    value = err.get("input")
    what = expected.format(type=type(value).__name__, input=repr(value))
    return ApiError(422, f"{field}: {what}", field=field)


def _document(raw: bytes) -> Any:
    """The parsed body, within `strictjson`'s bounds, or the 422 that names what is wrong."""
    try:
        return strictjson.loads(raw)
    except strictjson.JsonLimitError as exc:
        raise ApiError(422, exc.message, field=exc.field) from None
    except ValueError as exc:
        raise ApiError(422, f"body is not valid JSON: {exc}", field="body") from None


def parse(model: type[BaseModel], raw: bytes | dict, **context: Any) -> Any:
    """The body as `model`, or the ApiError of its first problem (every problem in `details` when several)."""
    doc = raw if isinstance(raw, dict) else _document(raw)
    if not isinstance(doc, dict):
        raise ApiError(422, f"body must be a JSON object, got {_json_type(doc)}", field="body")
    try:
        return model.model_validate(doc, context=context)
    except ValidationError as exc:
        errors = [_error(model, e) for e in exc.errors(include_url=False)]
        first = errors[0]
        if len(errors) > 1:
            first.details = [e.message for e in errors]
        raise first from None


def parse_object(raw: bytes) -> dict[str, Any]:
    """Any JSON object (a body whose keys the handler validates, as the config's)."""
    doc = _document(raw)
    if not isinstance(doc, dict):
        raise ApiError(422, f"body must be a JSON object, got {_json_type(doc)}", field="body")
    return doc


def _json_type(doc: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(doc), "a number"
    )
