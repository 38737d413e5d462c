"""The OpenAPI 3.1 description of the local API, served at ``/v1/openapi.json``.

The paths are written out: they are the contract other tools code against, and the API
tests check the server against it (schemathesis). The schemas of the answers are those of
the models the server serialises and the client validates (:mod:`lowkeyd.serving.api.wire`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from lowkeyd import __version__
from lowkeyd.serving.api.wire import Error, Job, Status, Summary

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}
}
# The answers' models (Summary for its header) and every model inside them, each once, named by its class.
_REFS, _DEFS = models_json_schema(
    [(model, "serialization") for model in (Error, Summary, Job, Status)], ref_template="#/components/schemas/{model}"
)


def _json(description: str, model: type[BaseModel], **extra: Any) -> dict[str, Any]:
    schema = _REFS[model, "serialization"]
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return _json(description, Error, **extra)


def openapi_document(
    max_upload_bytes: int, timeout: float, job_roots: list[str], *, bearer: bool
) -> dict[str, Any]:
    """The description of this daemon's API: its limits, its job roots, and whether it wants a token."""
    busy = _error("the queue is full; see Retry-After", headers=_RETRY_AFTER)
    unavailable = _error("lowkeyd is loading its models or stopping; see Retry-After", headers=_RETRY_AFTER)
    unauthorised = {"401": _error("missing or wrong bearer token")} if bearer else {}
    roots = ", ".join(job_roots) if job_roots else "none configured"
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "lowkeyd local API",
            "version": __version__,
            "description": "Cloak the faces in photos with the models the running lowkeyd daemon keeps loaded.",
        },
        "paths": {
            "/v1/cloak": {
                "post": {
                    "operationId": "cloak",
                    "summary": "Cloak a photo: its bytes in, the cloaked photo out in the same format",
                    "description": "Any Content-Type is accepted; the format is read from the bytes. Metadata is "
                    "handled as by `lowkeyd cloak` (EXIF kept, GPS stripped when configured, face tags removed). "
                    f"At most {max_upload_bytes} bytes.",
                    "parameters": [
                        {
                            "name": "timeout",
                            "in": "query",
                            "required": False,
                            "description": "give up after this many seconds (504)",
                            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": timeout},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the cloaked photo; the summary is in X-Lowkeyd-Summary",
                            "headers": {
                                "X-Lowkeyd-Summary": {
                                    "required": True,
                                    "description": "JSON: the Summary schema",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        "204": {
                            "description": "no face found and the daemon's no_face policy is skip: nothing returned",
                            "headers": {"X-Lowkeyd-Summary": {"required": True, "schema": {"type": "string"}}},
                        },
                        "400": _error("bad request (empty body, bad timeout)"),
                        **unauthorised,
                        "413": _error("the photo is over the size limit"),
                        "415": _error("not a photo lowkeyd can read"),
                        "422": _error("a face could not be protected; nothing is returned"),
                        "429": busy,
                        "503": unavailable,
                        "504": _error("not done in time"),
                    },
                }
            },
            "/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "summary": "Cloak a file under a job root into the outbox",
                    "description": f"The file must be under a configured job root ({roots}); symlinks are resolved "
                    "first. The result is published to <outbox>/<root name>/<path under the root>.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["path"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "path": {"type": "string", "pattern": "^/", "description": "absolute path"}
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(
                            "queued",
                            Job,
                            headers={"Location": {"required": True, "schema": {"type": "string"}}},
                            links={"GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}}},
                        ),
                        "400": _error("not the expected JSON, or not an absolute path"),
                        **unauthorised,
                        "403": _error("the path is not under a job root"),
                        "404": _error("no such file"),
                        "413": _error("the request is too large"),
                        "415": _error("not a photo file"),
                        "429": busy,
                        "503": unavailable,
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's state and, once done, its output and summary",
                    "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json("the job", Job),
                        **unauthorised,
                        "404": _error("no such job (ids do not survive a restart)"),
                    },
                }
            },
            "/v1/status": {
                "get": {
                    "operationId": "getStatus",
                    "summary": "The daemon: models, queue, jobs, and what the daemon reports about its folders",
                    "responses": {
                        "200": _json("status", Status),
                        **unauthorised,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This description",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **unauthorised,
                    },
                }
            },
        },
        "components": {
            "schemas": _DEFS["$defs"],
        },
    }
    if bearer:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
