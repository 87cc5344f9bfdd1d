"""The HTTP service: verify, embed, identify, cluster and the gallery over FastAPI, plus a web page.

Build it with ``create_app(embedder, gallery, api_key, limits)`` and serve it with uvicorn
(``facenet serve`` does both). Design:

* The model arrives loaded; the gallery (a file, or a PostgreSQL database shared with other replicas)
  opens once at start-up (lifespan), loads every face into the search index before the server is
  ready, and closes at shutdown. Every enrolment is its own committed transaction, so stopping (or
  killing) the server loses nothing that was answered with 201 and leaves no half-enrolled person.
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

This module holds the routes and the request checks; the pool, the worker and the time budget are
``facenet.serve.engine`` and the response shapes are ``facenet.serve.schemas``.
"""

import logging
import re
import unicodedata
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path

from facenet.embedder import FaceEmbedder
from facenet.errors import BadImageError, FaceNetError, GalleryError, GalleryUnavailableError, NoFaceError
from facenet.serve import openapi
from facenet.serve.security import (API_KEY_HEADER, BodyLimitMiddleware, Problem, SecurityHeadersMiddleware,
                                    check_api_key, problem_response)

from facenet.serve.engine import Engine, Limits, Upload
from facenet.serve.schemas import (ClusterResult, EmbedResult, IdentifyResult, ModelOut, PeopleResult, PersonOut,
                                   RemoveResult, Status, VerifyResult)

log = logging.getLogger("facenet.serve")
STATIC_DIR = Path(__file__).parent / "static"
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
            raise Problem(415, f"{name}: uploads must be images (image/jpeg, image/png, ...), not "
                               f"{kind or 'an undeclared type'}; with curl: -F 'photo=@face.jpg;type=image/jpeg'",
                          code="not_an_image")
        uploads.append(Upload(name, await part.read()))
    return uploads


def require_multipart(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise Problem(415, f"send photos as multipart/form-data, not {kind or 'a body without Content-Type'}",
                      code="not_multipart")


# A person's name: 1 to MAX_NAME_LENGTH characters, no control characters, not blank. Written as a
# pattern because the OpenAPI document states it too: clients and the server check the same rule.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"


def check_person_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not re.fullmatch(NAME_PATTERN, name):
        raise Problem(422, f"a person's name must be 1 to {MAX_NAME_LENGTH} characters, not blank, without "
                           "control characters", code="bad_name")
    return name.strip()


def check_flag(value, name: str) -> bool:
    """A boolean form field as the document states it: "true" or "false" (absent = false)."""
    text = "false" if value is None else str(value).strip().lower()
    if text not in ("true", "false"):
        raise Problem(422, f"{name} must be true or false", code="invalid_request")
    return text == "true"


def check_count(files: list, low: int, high: int, what: str) -> None:
    if not low <= len(files) <= high:
        raise Problem(422, f"{what} needs {low} to {high} photos, got {len(files)}", code="photo_count")


# -- the application -----------------------------------------------------------------------------


def create_app(embedder: FaceEmbedder, gallery: str | Path, api_key: str | None = None,
               limits: Limits = Limits(), policy: str | None = None) -> FastAPI:
    """The service over ``embedder`` (loaded) and the gallery at ``gallery`` (a file path or a PostgreSQL
    URL; created if absent, scoring people by ``policy``, see ``facenet.gallery.policy``).

    ``api_key`` guards enrol and remove; ``None`` disables them (401 with how to set a key).
    """
    engine = Engine(embedder, str(gallery), limits, policy)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        log.info("facenet service ready: model %s, gallery %s", embedder.name, engine.gallery.location)
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="facenet", summary="Face verification, identification and clustering (FaceNet embeddings)",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_upload_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="the server's API key (needed to enrol and remove people)")
    multipart = [Depends(require_multipart)]
    threshold_field = Form(ge=0.0, le=4.0, description="squared-L2 threshold (default: the model's)")

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

    @app.get("/healthz", response_model=Status, tags=["service"], summary="liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, tags=["service"], summary="readiness: model and gallery loaded")
    async def readyz():
        if not engine.ready:
            raise Problem(503, "the gallery is not open yet", code="not_ready", headers={"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/api/model", response_model=ModelOut, tags=["service"],
             summary="which model answers: name, id, threshold and what it was trained on")
    async def model():
        return engine.model()

    @app.post("/api/verify", response_model=VerifyResult, dependencies=multipart, tags=["faces"],
              summary="are the people in two photos the same person? (says which face of each it compared)")
    async def verify(a: Annotated[UploadFile, File(description="first photo")],
                     b: Annotated[UploadFile, File(description="second photo")],
                     threshold: Annotated[float | None, threshold_field] = None,
                     which: Annotated[str | None, Form(pattern="^(largest|central)$",
                                                       description="the face to compare in a photo with several "
                                                                   "(default: the model's choice, the largest)")]
                     = None):
        return await engine.run(engine.verify, await read_uploads([a, b]), threshold, which)

    @app.post("/api/embed", response_model=EmbedResult, dependencies=multipart, tags=["faces"],
              summary="128-D unit embeddings of the largest face in each photo")
    async def embed(photos: Annotated[list[UploadFile], File(description="one or more photos")]):
        check_count(photos, 1, limits.max_files, "embedding")
        return await engine.run(engine.embed_photos, await read_uploads(photos))

    @app.post("/api/identify", response_model=IdentifyResult, dependencies=multipart, tags=["faces"],
              summary="who is in this photo? for every face, the best-matching enrolled people within the "
                      "threshold, or unknown")
    async def identify(photo: Annotated[UploadFile, File(description="a photo")],
                       top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 5,
                       threshold: Annotated[float | None, threshold_field] = None,
                       which: Annotated[str, Form(pattern="^(all|largest|central)$",
                                                  description="every face (all), or the largest or central one")]
                       = "all"):
        return await engine.run(engine.identify, (await read_uploads([photo]))[0], top_k, threshold, which)

    @app.post("/api/cluster", response_model=ClusterResult, dependencies=multipart, tags=["faces"],
              summary="group photos by person")
    async def cluster(photos: Annotated[list[UploadFile], File(description="photos to group")],
                      threshold: Annotated[float | None, threshold_field] = None,
                      method: Annotated[str, Form(pattern="^(agglomerative|dbscan|chinese_whispers)$")]
                      = "agglomerative"):
        check_count(photos, 1, limits.max_files, "clustering")
        return await engine.run(engine.cluster, await read_uploads(photos), threshold, method)

    @app.get("/api/people", response_model=PeopleResult, tags=["gallery"], summary="everyone enrolled")
    async def people():
        return await engine.run(engine.people)

    @app.post("/api/people", response_model=PersonOut, status_code=201, tags=["gallery"],
              summary="enrol a person (needs the API key)", openapi_extra=_ENROL_BODY)
    async def enrol(request: Request, key: Annotated[str | None, Security(key_header)] = None):
        check_api_key(api_key, key)  # before the body is read: strangers cannot make us parse uploads
        require_multipart(request)
        # as many parts as the document allows: name, merge and up to max_files photos
        form = await request.form(max_files=limits.max_files, max_fields=limits.max_files + 2)
        name = check_person_name(str(form.get("name") or ""))
        photos = [p for p in form.getlist("photos") if isinstance(p, StarletteUpload)]
        check_count(photos, 1, limits.max_files, "enrolment")
        merge = check_flag(form.get("merge"), "merge")
        return await engine.run(engine.enrol, name, await read_uploads(photos), merge)

    @app.delete("/api/people/{name:path}", response_model=RemoveResult, tags=["gallery"],
                summary="remove a person and all their faces (needs the API key)")
    async def remove(name: str, key: Annotated[str | None, Security(key_header)] = None):
        check_api_key(api_key, key)
        return await engine.run(engine.remove, name)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        # Swagger UI from the swagger-ui-bundle wheel: /docs works offline, like the rest of the service
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="facenet API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="data:,")

    openapi.install(app, limits.max_files)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    return app


_ENROL_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["name", "photos"],
    "properties": {
        "name": {"type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": NAME_PATTERN,
                 "description": "the person's name (no control characters, not blank)"},
        "photos": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": "photos of this person, one face each (all must have a face)"},
        "merge": {"type": "boolean", "default": False,
                  "description": "add the photos to a person already enrolled under this name"}}}}}}}
