"""
The emulator's request log: what each request was, with every secret
replaced by ``[secure]`` before it is stored.
"""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiohttp import web

    from ._faults import Fault
    from ._routes import Route

MASK: Final = "[secure]"
"""
What the request log shows instead of a secret.
"""

# SECURITY: values of these never reach the request log.
_SECRET_HEADERS = frozenset({"x-access-token", "authorization", "cookie"})
_SECRET_FIELDS = frozenset(
    {"password", "api_id", "session_id", "api_key", "x-access-token", "token"}
)


def _mask(fields: Mapping[str, str]) -> dict[str, str]:
    return {k: MASK if k.lower() in _SECRET_FIELDS else v for k, v in fields.items()}


def _mask_json(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: MASK if str(k).lower() in _SECRET_FIELDS else _mask_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_json(v) for v in value]
    return value


@attrs.define(frozen=True)
class RequestRecord:
    """
    One request the emulator received, with secrets replaced by ``[secure]``.

    Attributes:
        seq: Arrival order, from 1.
        route: The route name, or `None` for an unknown path.
        method: The HTTP method.
        path: The URL path (never carries a secret on emulated routes).
        query: Query parameters, masked.
        headers: Request headers, masked.
        form: Form fields of a form-encoded body, masked; else `None`.
        json: A JSON body (secret-named keys masked); else `None`.
        remote: The client address.
        at: The emulator clock when it arrived (see `Emulator.now`).
        status: The status answered; `None` while in flight or if dropped.
        fault: The `Fault` that answered, if one did.
    """

    seq: int
    route: Route | None
    method: str
    path: str
    query: Mapping[str, str] = attrs.field(hash=False)
    headers: Mapping[str, str] = attrs.field(hash=False, repr=False)
    form: Mapping[str, str] | None = attrs.field(hash=False)
    json: object = attrs.field(hash=False)
    remote: str | None
    at: float
    status: int | None = None
    fault: Fault | None = None


async def read_record(
    request: web.Request,
    *,
    seq: int,
    route: Route | None,
    fault: Fault | None,
    at: float,
) -> RequestRecord:
    """
    Read *request*, its body included, into a masked `RequestRecord`.
    """
    form: dict[str, str] | None = None
    body: object = None
    if request.body_exists:
        if request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            posted = await request.post()
            form = _mask({k: v for k, v in posted.items() if isinstance(v, str)})
        else:
            raw = await request.read()
            with contextlib.suppress(ValueError, RecursionError):
                body = _mask_json(json.loads(raw, parse_float=Decimal))
    return RequestRecord(
        seq=seq,
        route=route,
        method=request.method,
        path=request.path,
        query=_mask(dict(request.query)),
        headers={
            k: MASK if k.lower() in _SECRET_HEADERS else v
            for k, v in request.headers.items()
        },
        form=form,
        json=body,
        remote=request.remote,
        at=at,
        fault=fault,
    )
