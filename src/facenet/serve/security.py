"""The service's guards: API key, request-body limit, RFC 9457 problem responses, browser headers.

API key policy: mutating endpoints (enrol, remove) need the key in the ``X-API-Key`` header. The
key comes from ``--api-key-file`` or ``$FACENET_API_KEY``; when neither is set the service still
runs read-only and refuses every mutation with 401 and a message saying how to set a key. No key
is ever generated or printed: a secret in a log is a leaked secret.
"""

from __future__ import annotations

import hmac
import json
import os
from http import HTTPStatus
from pathlib import Path

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from facenet.errors import FaceNetError

API_KEY_ENV = "FACENET_API_KEY"
API_KEY_HEADER = "X-API-Key"
MIN_KEY_LENGTH = 16
PROBLEM_TYPE = "application/problem+json"

# The page is self-contained (no CDN): scripts, styles and fetches from this origin only,
# images also from blob: URLs (the photos the user picked, drawn locally).
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class Problem(HTTPException):
    """An error answered as RFC 9457 problem details: ``status``, a ``detail`` for people, a ``code`` for programs.

    An ``HTTPException`` so that FastAPI passes it on unchanged when it is raised while a body is read.
    """

    def __init__(self, status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status, detail, headers)
        self.status, self.code = status, code


def problem_body(status: int, detail: str, code: str | None = None) -> dict:
    """``type`` is ``about:blank``, so ``title`` is the HTTP reason phrase (RFC 9457 §4.2.1)."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    if code:
        body["code"] = code
    return body


def problem_response(status: int, detail: str, code: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem_body(status, detail, code), status_code=status, headers=headers,
                        media_type=PROBLEM_TYPE)


def load_api_key(path: str | os.PathLike | None = None) -> str | None:
    """The key from ``path`` (first line, stripped) or ``$FACENET_API_KEY``; ``None`` when neither is set."""
    if path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FaceNetError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise FaceNetError(f"API key file {path} is not UTF-8 text; put the key on its first line") from None
        key = key.splitlines()[0].strip() if key else ""
        source = f"file {path}"
    else:
        key = os.environ.get(API_KEY_ENV, "").strip()
        source = f"${API_KEY_ENV}"
        if not key:
            return None
    if len(key) < MIN_KEY_LENGTH:
        raise FaceNetError(f"the API key in {source} has {len(key)} characters; use at least {MIN_KEY_LENGTH} "
                           "random ones, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return key


def check_api_key(expected: str | None, provided: str | None) -> None:
    """Raise a 401 ``Problem`` unless ``provided`` equals ``expected`` (constant-time comparison)."""
    if expected is None:
        raise Problem(401, "this server has no API key configured, so enrolling and removing people is "
                           f"disabled; restart it with ${API_KEY_ENV} set or with --api-key-file FILE",
                      code="no_api_key")
    if provided is None:
        raise Problem(401, f"this request changes the gallery and needs the API key in the {API_KEY_HEADER} header",
                      code="missing_api_key", headers={"WWW-Authenticate": API_KEY_HEADER})
    if not hmac.compare_digest(provided.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise Problem(401, f"the {API_KEY_HEADER} header does not hold this server's API key",
                      code="wrong_api_key", headers={"WWW-Authenticate": API_KEY_HEADER})


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes``: early by ``Content-Length``, and by counting the bytes
    actually received (a chunked or lying client is stopped as soon as it crosses the limit).

    Starlette's own ``RequestBodyLimitMiddleware`` answers some of these cases in plain text; this
    one always answers problem details, like every other error of the service.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_problem(send, 413, self._too_large())
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise Problem(413, self._too_large(), code="body_too_large")
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> str:
        return (f"request body is larger than this server's {self.max_bytes / 2**20:.3g} MiB limit; "
                "send smaller photos or fewer at a time (the limit is --max-upload-mb)")


async def _send_problem(send, status: int, detail: str) -> None:
    body = json.dumps(problem_body(status, detail, "body_too_large")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """``nosniff``, no framing, no referrer on every answer; the strict CSP on everything but /docs
    (Swagger UI's page starts itself with an inline script, which the strict policy forbids)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        strict = not scope["path"].startswith("/docs")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                if strict:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
