"""The service's guards: keys and their scopes, rate limits, request-body limit, RFC 9457 problem
responses, browser headers.

Keys and scopes: the gallery is biometric data, so reading it (``GET /api/people``, ``POST
/api/identify``) needs a key in the ``X-API-Key`` header: the **read key** (``--read-key-file`` or
``$FACENET_READ_KEY``) or the **admin key** (``--api-key-file`` or ``$FACENET_API_KEY``), which also
enrols and removes people. ``--public`` (or ``$FACENET_PUBLIC=1``) lets clients without a key read the
gallery, for a local demo; enrolling and removing still need the admin key. Without the admin key a
search cannot be widened (``Access.may_widen``). A server without keys runs, refusing what needs one
with 401 and a message saying how to set it. No key is ever generated or printed: a secret in a log is
a leaked secret.

Rate limit: every client (its key's scope and its address) gets ``rate`` requests under ``/api/``
(the ``limits`` library's moving window); the next is answered 429 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import time
from dataclasses import dataclass
from enum import IntEnum
from http import HTTPStatus
from pathlib import Path

from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.exceptions import HTTPException

from facenet.errors import FaceNetError

API_KEY_ENV = "FACENET_API_KEY"
READ_KEY_ENV = "FACENET_READ_KEY"
PUBLIC_ENV = "FACENET_PUBLIC"
API_KEY_HEADER = "X-API-Key"
MIN_KEY_LENGTH = 16
PROBLEM_TYPE = "application/problem+json"
HOW_TO_SET_KEYS = (
    f"set the admin key with ${API_KEY_ENV} or --api-key-file FILE and a read-only key with "
    f"${READ_KEY_ENV} or --read-key-file FILE, or start with --public (${PUBLIC_ENV}=1) for a local "
    "demo"
)

# The page is self-contained (no CDN): scripts, styles and fetches from this origin only,
# images also from blob: URLs (the photos the user picked, drawn locally).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


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


def problem_response(
    status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, detail, code), status_code=status, headers=headers, media_type=PROBLEM_TYPE
    )


# -- keys ----------------------------------------------------------------------------------------


class Access(IntEnum):
    """What a request may do, by the key it carries; each level includes the ones below."""

    ANONYMOUS = 0  # no key (or no key configured): verify, embed, cluster; the gallery only on a public server
    READ = 1  # the read key: list and search the gallery, within the model's own limits
    ADMIN = 2  # the admin key: also enrol, remove, and search wider

    @property
    def may_widen(self) -> bool:
        """Only the admin may search past the model's open-set threshold or ask for many candidates:
        a wide search of a gallery names people who are not in the photo."""
        return self is Access.ADMIN


@dataclass(frozen=True)
class Keys:
    """The server's keys (``None``: not set) and whether clients without one may read the gallery."""

    admin: str | None = None
    read: str | None = None
    public: bool = False

    def __post_init__(self):
        if self.admin is not None and self.admin == self.read:
            raise FaceNetError("the read key and the admin key are the same; give the read key a value of its own")

    def access(self, provided: str | None) -> Access | None:
        """The scope the ``X-API-Key`` header grants; ``None`` for a key this server does not hold
        (ignored, as anonymous, when the server has no key at all)."""
        if provided is None or self.admin is None and self.read is None:
            return Access.ANONYMOUS
        given = provided.encode("utf-8", "surrogateescape")
        for key, access in ((self.admin, Access.ADMIN), (self.read, Access.READ)):
            if key is not None and hmac.compare_digest(given, key.encode("utf-8")):  # constant time
                return access
        return None

    def may_read(self, provided: str | None) -> bool:
        """Whether a request with this key may read the gallery (what ``require(key, READ)`` would let through)."""
        access = self.access(provided)
        return access is not None and (access >= Access.READ or self.public)

    def require(self, provided: str | None, needed: Access) -> Access:
        """The request's access if it reaches ``needed``; else a 401 (no key, a wrong one, none configured)
        or 403 (the read key where the admin key is needed) ``Problem`` saying what to do."""
        access = self.access(provided)
        if access is None:
            raise Problem(
                401,
                f"the {API_KEY_HEADER} header holds none of this server's keys",
                code="wrong_api_key",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )
        if access >= needed or needed is Access.READ and self.public:
            return access
        if needed is Access.ADMIN and self.admin is None:
            raise Problem(
                401,
                "this server has no admin key configured, so enrolling and removing people is "
                f"disabled; restart it with ${API_KEY_ENV} set or with --api-key-file FILE",
                code="no_api_key",
            )
        if self.admin is None and self.read is None:
            raise Problem(
                401,
                "this server has no key configured, so the gallery (who is enrolled) cannot be "
                f"read; {HOW_TO_SET_KEYS}",
                code="no_api_key",
            )
        if access is Access.READ:
            raise Problem(
                403,
                "the read key cannot change the gallery; enrolling and removing people need the admin key",
                code="read_only_key",
            )
        what = (
            "changes the gallery and needs the admin key"
            if needed is Access.ADMIN
            else "reads the gallery (who is enrolled) and needs the read key or the admin key"
        )
        raise Problem(
            401,
            f"this request {what} in the {API_KEY_HEADER} header",
            code="missing_api_key",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )


def load_key(path: str | os.PathLike | None, env: str) -> str | None:
    """A key from ``path`` (first line, stripped) or from ``$env``; ``None`` when neither is set."""
    if path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FaceNetError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise FaceNetError(f"key file {path} is not UTF-8 text; put the key on its first line") from None
        key = key.splitlines()[0].strip() if key else ""
        source = f"file {path}"
    else:
        key = os.environ.get(env, "").strip()
        source = f"${env}"
        if not key:
            return None
    if len(key) < MIN_KEY_LENGTH:
        raise FaceNetError(
            f"the key in {source} has {len(key)} characters; use at least {MIN_KEY_LENGTH} "
            "random ones, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return key


def load_keys(
    admin_file: str | os.PathLike | None = None, read_file: str | os.PathLike | None = None, public: bool = False
) -> Keys:
    """The keys ``facenet serve`` runs with: from the files given, else from the environment."""
    flag = os.environ.get(PUBLIC_ENV, "").strip().lower()
    if flag not in ("", "0", "1", "false", "true", "no", "yes"):
        raise FaceNetError(f"${PUBLIC_ENV} must be 1 or 0 (true/false), not {flag!r}")
    return Keys(
        load_key(admin_file, API_KEY_ENV), load_key(read_file, READ_KEY_ENV), public or flag in ("1", "true", "yes")
    )


# -- rate limit ----------------------------------------------------------------------------------


def parse_rate(text: str) -> RateLimitItem:
    """``"120/minute"``, ``"10 per second"``, ... (the ``limits`` notation) as a rate; a clear error otherwise."""
    try:
        return parse(text)
    except ValueError:
        raise FaceNetError(
            f"rate limit {text!r} is not a rate; write it as N/second, N/minute or N/hour, e.g. 120/minute"
        ) from None


class RateLimitMiddleware:
    """At most ``rate`` requests under ``/api/`` per client, answered 429 with ``Retry-After`` past it.

    A client is its key's scope and its address, so guessing keys is limited per address and a keyed
    client does not spend the allowance of anonymous ones beside it. The probes (``/healthz``,
    ``/readyz``), the page and the docs are never limited.
    """

    def __init__(self, app, keys: Keys, rate: str):
        self.app, self.keys, self.rate = app, keys, parse_rate(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        key = dict(scope["headers"]).get(API_KEY_HEADER.lower().encode())
        access = self.keys.access(None if key is None else key.decode("latin-1"))
        client = f"{'guess' if access is None else access.name}@{(scope.get('client') or ('?',))[0]}"
        if self.limiter.hit(self.rate, client):
            return await self.app(scope, receive, send)
        wait = max(1, math.ceil(self.limiter.get_window_stats(self.rate, client).reset_time - time.time()))
        response = problem_response(
            429,
            f"too many requests from this client (the limit is {self.rate}); retry in {wait} s",
            "rate_limited",
            {"Retry-After": str(wait)},
        )
        await response(scope, receive, send)


# -- request body and browser headers --------------------------------------------------------------


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
        return (
            f"request body is larger than this server's {self.max_bytes / 2**20:.3g} MiB limit; "
            "send smaller photos or fewer at a time (the limit is --max-upload-mb)"
        )


async def _send_problem(send, status: int, detail: str) -> None:
    body = json.dumps(problem_body(status, detail, "body_too_large")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
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
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if strict:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
