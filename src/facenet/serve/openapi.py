"""The service's OpenAPI document, made to describe every answer the server gives.

FastAPI documents the success response of each route and a JSON 422; but this server answers every
error as ``application/problem+json`` and has guards FastAPI does not know about (API key, body
size, content types, busy server, time budget, rate limit). A client generator, or a contract fuzzer such as
schemathesis, reads the document as the truth, so here the generated document is completed:

* every error status an operation can answer, with the problem-details schema;
* photo parts declared as images (``encoding.contentType``) and photo lists bounded by
  ``Limits.max_files``, as the server checks them.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from facenet.serve.engine import READ_MAX_TOP_K

PROBLEM = "application/problem+json"
PHOTO_TYPE = "image/*"  # what the server accepts for a photo part (read_uploads checks image/...)

PROBLEM_SCHEMA = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong and what to do, for people"},
        "code": {"type": "string", "description": "a stable identifier for programs"},
    },
}

ERRORS = {
    400: "a photo could not be decoded (bad_image), or the multipart body is malformed",
    401: "the key is missing (missing_api_key) or wrong (wrong_api_key), or this server has none (no_api_key)",
    403: "the read key cannot change the gallery (read_only_key), or a search wider than the model's open-set "
    f"threshold or top_k {READ_MAX_TOP_K} needs the admin key (search_too_wide)",
    404: "no person by that name",
    409: "the name is already enrolled; send merge=true to add the photos (name_taken)",
    413: "the request body, or a photo's pixel count, is over the server's limit",
    415: "the body is not multipart/form-data (not_multipart), or a part is not declared as an image",
    422: "a field is invalid (invalid_request), the photo count or name is out of bounds, or a photo shows "
    "no face (no_face)",
    429: "too many requests from this client (rate_limited; see Retry-After)",
    500: "an unexpected server error (logged)",
    503: "the server is busy (busy), the request ran over its time budget (over_time_budget), the gallery is "
    "unreachable, or the service is starting (see Retry-After)",
}


def install(app: FastAPI, max_files: int) -> None:
    """Serve the completed document as ``app.openapi()`` (built once, on first request)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes), max_files
            )
        return app.openapi_schema

    app.openapi = openapi


def complete(schema: dict, max_files: int) -> dict:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    components.pop("HTTPValidationError", None)  # never sent: validation errors are problems too
    components.pop("ValidationError", None)
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            multipart = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if multipart:
                _declare_photos(multipart, components, max_files)
            for status in _statuses(path, method, op, multipart is not None):
                op["responses"][str(status)] = {
                    "description": ERRORS[status],
                    "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
    return schema


def _statuses(path: str, method: str, op: dict, multipart: bool) -> list[int]:
    """The error statuses the server can answer for this operation (see app.py and security.py)."""
    codes = {500}
    if path.startswith("/api/"):
        codes.add(429)  # the per-client rate limit
    if path.startswith("/api/") and path != "/api/model" or path == "/readyz":
        codes.add(503)  # work is queued and has a time budget (or the service is not ready)
    if "422" in op["responses"] or op.get("parameters"):
        codes.add(422)
    if multipart:
        codes |= {400, 413, 415, 422}
    if op.get("security"):
        codes.add(401)
        if not (path == "/api/people" and method == "get"):
            codes.add(403)  # the read key where the admin key is needed, or a search too wide without it
    if method == "delete":
        codes.add(404)
    if path == "/api/people" and method == "post":
        codes.add(409)
    return sorted(codes)


def _declare_photos(multipart: dict, components: dict, max_files: int) -> None:
    """Binary parts are photos: declared as images; lists of them hold 1 to ``max_files``; optional
    fields are omitted, never null (multipart has no null)."""
    body = multipart["schema"]
    if "$ref" in body:
        body = components[body["$ref"].rsplit("/", 1)[1]]
    encoding = multipart.setdefault("encoding", {})
    for name, prop in body.get("properties", {}).items():
        if "anyOf" in prop:  # a form field cannot be null; an optional one is simply left out
            prop["anyOf"] = [alt for alt in prop["anyOf"] if alt.get("type") != "null"]
            if len(prop["anyOf"]) == 1:
                prop.update(prop.pop("anyOf")[0])
        if _is_file(prop):
            encoding[name] = {"contentType": PHOTO_TYPE}
        elif prop.get("type") == "array" and _is_file(prop.get("items", {})):
            prop.update(minItems=1, maxItems=max_files)
            encoding[name] = {"contentType": PHOTO_TYPE}


def _is_file(prop: dict) -> bool:
    """A file part: OpenAPI 3.0 says format binary, 3.1 (what FastAPI writes) contentMediaType."""
    return prop.get("format") == "binary" or "contentMediaType" in prop
