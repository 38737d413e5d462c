"""The OpenAPI 3.1 description of the local API, served at ``/v1/openapi.json``.

Written out rather than generated: it is the contract other tools code
against, and the API tests check the server against it (schemathesis).
"""

from __future__ import annotations

from typing import Any

from lowkeyd import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}
}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}, **extra}


def _similarities() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "number"}}


_FACE = {
    "type": "object",
    "required": ["box", "size", "status", "similarity", "thresholds", "protected_against", "lpips"],
    "properties": {
        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                "description": "x0, y0, x1, y1 in photo pixels"},
        "size": {"type": "number", "description": "face size in pixels"},
        "status": {"type": "string", "enum": ["cloaked", "too_small"]},
        "similarity": {**_similarities(),
                       "description": "ensemble member -> cosine similarity of the cloaked face to the original"},
        "thresholds": {**_similarities(), "description": "ensemble member -> its match threshold"},
        "protected_against": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "lpips": {"type": ["number", "null"], "description": "perceptual change of the face (LPIPS)"},
    },
}

# One group of faces in a holdout estimate: mean over folds, the worst fold and its 95% interval, per measure.
_ESTIMATE_GROUP = {
    "faces": {"type": "integer"},
    **{
        f"{measure}{suffix}": schema
        for measure in ("self_social", "cross_social")
        for suffix, schema in (
            # null where the group has nothing to measure (no other photo of its people, for cross_social)
            ("", {"type": ["number", "null"]}),
            ("_worst_fold", {"type": ["number", "null"]}),
            ("_worst_fold_interval", {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2}),
        )
    },
}

_SUMMARY = {
    "type": "object",
    "required": ["status", "message", "faces_cloaked", "faces_too_small", "preset", "preset_settings", "seconds",
                 "protected_against", "faces"],
    "properties": {
        "status": {"type": "string", "enum": ["cloaked", "no_face", "already_cloaked"]},
        "message": {"type": "string"},
        "faces_cloaked": {"type": "integer", "minimum": 0},
        "faces_too_small": {"type": "integer", "minimum": 0},
        "preset": {"type": "string"},
        "preset_settings": {
            "type": "object",
            "description": "every setting of the attack that ran (the preset's, with the daemon's attack: overrides)",
        },
        "seconds": {"type": "number"},
        "protected_against": {
            "type": "object",
            "additionalProperties": {"type": "boolean"},
            "description": "attack member -> every cloaked face is past its match threshold (white-box: the "
            "attack optimised against these very models)",
        },
        "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}},
        "holdout_estimate": {
            "type": ["object", "null"],
            "description": "what `lowkeyd bench --holdout` measured on the varied test set for this preset: the "
            "fraction of faces a recogniser left out of the attack fails to match after resize + JPEG against their "
            "own original (self_social) and the person's other photos (cross_social); each as the mean over folds "
            "and the worst fold with its Wilson 95% interval, for every face and, in categories, for this photo's "
            "kinds of face (black-and-white, small); null for a preset not measured with its present settings",
            "properties": {
                "preset": {"type": "string"},
                "folds": {"type": "integer"},
                **_ESTIMATE_GROUP,
                "categories": {"type": "object", "additionalProperties": {"type": "object", "properties": _ESTIMATE_GROUP}},
            },
        },
    },
}

_JOB = {
    "type": "object",
    "required": ["id", "status", "path", "root", "created", "finished", "output", "summary", "error"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "path": {"type": "string", "description": "the source file, symlinks resolved"},
        "root": {"type": "string", "description": "the job root's name; the outbox folder it is published in"},
        "created": {"type": "number", "description": "Unix time"},
        "finished": {"type": ["number", "null"]},
        "output": {"type": ["string", "null"], "description": "the published photo in the outbox"},
        "summary": {"oneOf": [{"$ref": "#/components/schemas/Summary"}, {"type": "null"}]},
        "error": {"type": ["string", "null"]},
    },
}

_STATUS = {
    "type": "object",
    "required": ["version", "pid", "started", "ready", "preset", "device", "queue", "jobs"],
    "properties": {
        "version": {"type": "string"},
        "pid": {"type": "integer"},
        "started": {"type": "number"},
        "ready": {"type": "boolean", "description": "the models are loaded"},
        "preset": {"type": "string"},
        "device": {"type": ["string", "null"]},
        "queue": {
            "type": "object",
            "required": ["busy", "size"],
            "properties": {"busy": {"type": "integer"}, "size": {"type": "integer"}},
        },
        "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
        "files": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "watched files per state (queued, done, failed, held: short of the target under below_target: hold...) and done ones per outcome",
        },
        "hooks": {
            "type": ["object", "null"],
            "additionalProperties": {"type": "integer"},
            "description": "publish hook runs: ok, failed, pending; null without a hook",
        },
    },
}


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
                        "202": {
                            "description": "queued",
                            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
                            "links": {
                                "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}}
                            },
                        },
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
                        "200": {
                            "description": "the job",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
                        },
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
                        "200": {
                            "description": "status",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
                        },
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
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                        "Face": _FACE, "Summary": _SUMMARY, "Job": _JOB, "Status": _STATUS},
        },
    }
    if bearer:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
