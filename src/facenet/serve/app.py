"""The HTTP service: verify, embed, identify, cluster and the gallery over FastAPI, plus a web page.

Build it with ``create_app(embedder, gallery, keys, limits)`` and serve it with uvicorn
(``facenet serve`` does both). Design:

* The model arrives loaded; the gallery (a file, or a PostgreSQL database shared with other replicas)
  opens once at start-up, in the background: the socket opens and ``/healthz`` answers at once,
  ``/readyz`` answers 503 until every face is in the search index. It closes at shutdown. Every
  enrolment is its own committed transaction, so stopping (or killing) the server loses nothing that
  was answered with 201 and leaves no half-enrolled person.
* The gallery is biometric data: listing and searching it needs the read or the admin key, enrolling
  and removing the admin key, and only the admin may search wider than the model's open-set threshold
  (``facenet.serve.security``: keys, scopes, ``--public``, the per-client rate limit).
* No upload can stall the server. Photos are decoded, searched for faces and embedded in a pool of
  ``Limits.workers`` threads (one per core by default), big JPEGs at a reduced working size; the
  gallery is read and written on **one** worker thread (SQLite connections belong to the thread that
  opened them, one writer needs no locks); the event loop does no CPU work, so ``/healthz`` answers
  while the pool is busy. At most ``Limits.max_pending`` requests may be in progress; the next is
  answered 503 with ``Retry-After`` instead of queueing without bound. Each request has a time budget
  (``Limits.time_budget_s``, waiting included): past it, it is answered 503 with ``Retry-After``, and
  an enrolment past it writes nothing.
* Other processes' enrolments and removals reach this one through the gallery's change feed: each
  identify catches up first, and a background task waits for changes (PostgreSQL LISTEN/NOTIFY; a
  gallery file is polled every second) so the index is usually current before a request comes.
  A database that cannot be reached is answered 503 with ``Retry-After``.
* Every error is RFC 9457 problem details (``application/problem+json``), never a traceback.
  Nothing a request carries becomes a file path: names and file names are stored as data only.

This module holds the routes, one router per part of the API, each taking the engine as a dependency,
and the request checks; the pool, the worker and the time budget are ``facenet.serve.engine`` and the
response shapes are ``facenet.serve.schemas``.
"""

import logging
import re
import unicodedata
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Path, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException

from facenet.embedder import FaceEmbedder
from facenet.errors import BadImageError, FaceNetError, GalleryError, GalleryUnavailableError, NoFaceError
from facenet.serve import openapi
from facenet.serve.engine import READ_MAX_TOP_K, Engine, Limits, Upload
from facenet.serve.schemas import (
    ClusterResult,
    EmbedResult,
    IdentifyResult,
    ModelOut,
    PeopleResult,
    PersonOut,
    RemoveResult,
    Status,
    VerifyResult,
)
from facenet.serve.security import (
    API_KEY_HEADER,
    Access,
    BodyLimitMiddleware,
    Keys,
    Problem,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
    problem_response,
)

log = logging.getLogger("facenet.serve")
STATIC_DIR = FilePath(__file__).parent / "static"
MAX_NAME_LENGTH = 100
MAX_TOP_K = 50

# -- request helpers -----------------------------------------------------------------------------


def clean_label(text: str | None, default: str) -> str:
    """A file name or person name as safe display text: no control characters, bounded length."""
    text = "".join(ch for ch in (text or "") if unicodedata.category(ch)[0] != "C").strip()
    return text[:200] or default


async def read_uploads(files: list[StarletteUpload]) -> list[Upload]:
    """Check each part is declared as an image (415 otherwise) and read its bytes."""
    uploads = []
    for number, part in enumerate(files, 1):
        name = clean_label(part.filename, f"photo {number}")
        kind = (part.content_type or "").split(";")[0].strip().lower()
        if not kind.startswith("image/"):
            raise Problem(
                415,
                f"{name}: uploads must be photos declared as images (image/jpeg, image/png, ...), "
                f"not {kind or 'an undeclared type'}; choose a photo file",
                code="not_an_image",
            )
        uploads.append(Upload(name, await part.read()))
    return uploads


def require_multipart(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise Problem(
            415,
            f"send photos as multipart/form-data, not {kind or 'a body without Content-Type'}",
            code="not_multipart",
        )


# A person's name: 1 to MAX_NAME_LENGTH characters, no control characters, not blank. Written as a
# pattern because the OpenAPI document states it too: clients and the server check the same rule.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"


def check_person_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not re.fullmatch(NAME_PATTERN, name):
        raise Problem(
            422,
            f"a person's name must be 1 to {MAX_NAME_LENGTH} characters, not blank, without control characters",
            code="bad_name",
        )
    return name.strip()


def check_flag(value, name: str) -> bool:
    """A boolean form field as the document states it: "true" or "false" (absent = false)."""
    text = "false" if value is None else str(value).strip().lower()
    if text not in ("true", "false"):
        raise Problem(422, f"{name} must be true or false", code="invalid_request")
    return text == "true"


def check_count(files: list, high: int, what: str) -> None:
    if not 1 <= len(files) <= high:
        raise Problem(422, f"{what} needs 1 to {high} photos, got {len(files)}", code="photo_count")


# -- dependencies: the engine, and the key a request carries --------------------------------------


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]
key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="the read key (list and search the gallery) or the admin key (also enrol and remove people)",
)


def needs(level: Access):
    """A dependency that answers 401/403 unless the request's key grants ``level``; it gives the access."""

    def check(request: Request, key: Annotated[str | None, Security(key_header)] = None) -> Access:
        return request.app.state.keys.require(key, level)

    return check


Reader = Annotated[Access, Depends(needs(Access.READ))]
Admin = Annotated[Access, Depends(needs(Access.ADMIN))]
THRESHOLD = Form(ge=0.0, le=4.0, description="squared-L2 threshold (default: the model's)")

# -- service: probes and the model ----------------------------------------------------------------

service_routes = APIRouter(tags=["service"])


@service_routes.get("/healthz", response_model=Status, summary="liveness: the process answers")
async def healthz():
    return {"status": "ok"}


@service_routes.get("/readyz", response_model=Status, summary="readiness: model and gallery loaded")
async def readyz(engine: EngineDep):
    engine.check_ready()
    return {"status": "ready"}


@service_routes.get(
    "/api/model", response_model=ModelOut, summary="which model answers: name, id, threshold and what it was trained on"
)
async def model(
    request: Request,
    engine: EngineDep,
    key: Annotated[
        str | None, Header(alias=API_KEY_HEADER, description="the read or admin key: adds open_set (not needed)")
    ] = None,
):
    # the open-set promise tells how many faces are enrolled: only for callers who may read the gallery
    return await engine.model(open_set=request.app.state.keys.may_read(key))


# -- faces: photos in, answers out ---------------------------------------------------------------

face_routes = APIRouter(tags=["faces"], dependencies=[Depends(require_multipart)])


@face_routes.post(
    "/api/verify",
    response_model=VerifyResult,
    summary="are the people in two photos the same person? (says which face of each it compared)",
)
async def verify(
    engine: EngineDep,
    a: Annotated[UploadFile, File(description="first photo")],
    b: Annotated[UploadFile, File(description="second photo")],
    threshold: Annotated[float | None, THRESHOLD] = None,
    which: Annotated[
        str | None,
        Form(
            pattern="^(largest|central)?$",  # empty: the default (FastAPI reads an empty form field as absent)
            description="the face to compare in a photo with several (default: the model's choice, the largest)",
        ),
    ] = None,
):
    return await engine.run(engine.verify, await read_uploads([a, b]), threshold, which)


@face_routes.post(
    "/api/embed",
    response_model=EmbedResult,
    summary="unit embeddings (the model's embedding_size, see /api/model) of the largest face in each photo",
)
async def embed(engine: EngineDep, photos: Annotated[list[UploadFile], File(description="one or more photos")]):
    check_count(photos, engine.limits.max_files, "embedding")
    return await engine.run(engine.embed_photos, await read_uploads(photos))


@face_routes.post(
    "/api/identify",
    response_model=IdentifyResult,
    summary="who is in this photo? for every face, the best-matching enrolled people within the "
    "threshold, or unknown (needs the read or admin key)",
    description="Without the admin key, `threshold` may not exceed the model's open-set threshold for "
    f"this gallery and `top_k` may not exceed {READ_MAX_TOP_K}: a wider search is refused with 403 "
    "(`search_too_wide`), never silently narrowed.",
)
async def identify(
    engine: EngineDep,
    access: Reader,
    photo: Annotated[UploadFile, File(description="a photo")],
    top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 5,
    threshold: Annotated[float | None, THRESHOLD] = None,
    which: Annotated[
        str,
        Form(
            pattern="^(all|largest|central)?$",
            description="every face (all, the default), or the largest or central one",
        ),
    ] = "all",
):
    return await engine.run(
        engine.identify, (await read_uploads([photo]))[0], top_k, threshold, which, access.may_widen
    )


@face_routes.post(
    "/api/cluster", response_model=ClusterResult, summary="group photos by person (the gallery is not read)"
)
async def cluster(
    engine: EngineDep,
    photos: Annotated[list[UploadFile], File(description="photos to group")],
    threshold: Annotated[float | None, THRESHOLD] = None,
    method: Annotated[
        str, Form(pattern="^(agglomerative|dbscan|chinese_whispers)?$")
    ] = "agglomerative",  # empty: default
):
    check_count(photos, engine.limits.max_files, "clustering")
    return await engine.run(engine.cluster, await read_uploads(photos), threshold, method)


# -- gallery: who is enrolled ---------------------------------------------------------------------

gallery_routes = APIRouter(prefix="/api/people", tags=["gallery"])


@gallery_routes.get("", response_model=PeopleResult, summary="everyone enrolled (needs the read or admin key)")
async def people(engine: EngineDep, access: Reader):
    return await engine.run(engine.people)


@gallery_routes.post(
    "",
    response_model=PersonOut,
    status_code=201,
    summary="enrol a person (needs the admin key)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["name", "photos"],
                        "properties": {
                            "name": {
                                "type": "string",
                                "maxLength": MAX_NAME_LENGTH,
                                "pattern": NAME_PATTERN,
                                "description": "the person's name (no control characters, not blank)",
                            },
                            "photos": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "photos of this person, one face each (all must have a face)",
                            },
                            "merge": {
                                "type": "boolean",
                                "default": False,
                                "description": "add the photos to a person already enrolled under this name",
                            },
                        },
                    }
                }
            },
        }
    },
)
async def enrol(request: Request, engine: EngineDep, access: Admin):
    # the key is checked (a dependency) before the body is read: strangers cannot make us parse uploads
    require_multipart(request)
    limit = engine.limits.max_files  # as many parts as the document allows: name, merge and the photos
    form = await request.form(max_files=limit, max_fields=limit + 2)
    name = check_person_name(str(form.get("name") or ""))
    photos = [p for p in form.getlist("photos") if isinstance(p, StarletteUpload)]
    check_count(photos, limit, "enrolment")
    merge = check_flag(form.get("merge"), "merge")
    return await engine.run(engine.enrol, name, await read_uploads(photos), merge)


@gallery_routes.delete(
    "/{name:path}", response_model=RemoveResult, summary="remove a person and all their faces (needs the admin key)"
)
async def remove(
    engine: EngineDep,
    access: Admin,
    name: Annotated[
        str,
        Path(
            max_length=MAX_NAME_LENGTH,
            pattern=NAME_PATTERN,
            description="the name as enrolled (surrounding spaces are ignored, as at enrolment)",
        ),
    ],
):
    return await engine.run(engine.remove, check_person_name(name))


# -- the page --------------------------------------------------------------------------------------

page_routes = APIRouter(include_in_schema=False)


@page_routes.get("/")
async def index():
    return FileResponse(STATIC_DIR / "index.html")


@page_routes.get("/favicon.ico")
async def favicon():
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


# -- errors: every one as problem details ----------------------------------------------------------


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request, exc: Problem):
        return problem_response(exc.status, exc.detail, exc.code, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors())
        return problem_response(422, f"invalid request ({fields})", "invalid_request")

    @app.exception_handler(FaceNetError)
    async def _facenet(request, exc: FaceNetError):
        if isinstance(exc, NoFaceError):
            return problem_response(422, str(exc), "no_face")
        if isinstance(exc, BadImageError):
            return problem_response(400, str(exc), "bad_image")
        if isinstance(exc, GalleryUnavailableError):
            return problem_response(503, str(exc), "gallery_unavailable", {"Retry-After": "2"})
        if isinstance(exc, GalleryError):
            return problem_response(409, str(exc), "gallery")
        log.error("facenet error in %s %s: %s", request.method, request.url.path, exc)
        return problem_response(500, "the server could not complete this request; its log says why", "internal")

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return problem_response(500, "unexpected server error; it has been logged", "internal")


# -- the application -------------------------------------------------------------------------------


def create_app(
    embedder: FaceEmbedder,
    gallery: str | FilePath,
    keys: Keys = Keys(),
    limits: Limits = Limits(),
    policy: str | None = None,
    index: str = "auto",
) -> FastAPI:
    """The service over ``embedder`` (loaded) and the gallery at ``gallery`` (a file path or a
    PostgreSQL URL; created if absent, scoring people by ``policy``, see ``facenet.gallery.policy``).

    ``index`` is how each replica searches (``Gallery.open``; "pgvector": inside PostgreSQL, no copy here).
    ``keys`` says who may read and change the gallery (``facenet.serve.security.Keys``; by default
    nobody: the gallery endpoints answer 401 with how to set a key).
    """
    engine = Engine(embedder, str(gallery), limits, policy, index)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()  # returns at once: the gallery loads in the background, /readyz says when
        try:
            yield
        finally:
            await engine.stop()

    # Swagger UI 5 from the fastapi-offline wheel: /docs reads OpenAPI 3.1 and works offline
    app = FastAPIOffline(
        title="facenet",
        summary="Face verification, identification and clustering (FaceNet embeddings)",
        lifespan=lifespan,
        redoc_url=None,
        static_url="/docs-assets",
        favicon_url="/favicon.ico",
    )
    app.state.engine, app.state.keys = engine, keys
    if limits.rate_limit is not None:
        app.add_middleware(RateLimitMiddleware, keys=keys, rate=limits.rate_limit)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_upload_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    add_error_handlers(app)
    for router in (service_routes, face_routes, gallery_routes, page_routes):
        app.include_router(router)
    openapi.install(app, limits.max_files)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
