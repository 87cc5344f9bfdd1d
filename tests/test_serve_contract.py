"""The OpenAPI document tells the truth (issue 12, item 16): a bounded schemathesis run — every check,
schema-valid and schema-invalid data, a few examples per operation — against the app in process (ASGI:
no socket, nothing leaves the machine) finds no response the document does not describe and no
schema-valid request the server refuses."""

import io

import numpy as np
import pytest
from PIL import Image

schemathesis = pytest.importorskip(
    "schemathesis",
    reason="schemathesis is not installed (pip install 'facenet[dev]'); the API contract fuzz run is skipped",
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

KEY = "test-key-0123456789abcdef"
EXAMPLES = 8  # per operation: bounded, a few seconds each


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


PHOTO_FIELDS = {"a", "b", "photo", "photos"}  # the API's file parts


def _as_photo(value):
    """File contents become a real (small) photo: random bytes are rightly refused (400 bad_image) and no
    schema can say "a decodable image"; any other generated value is kept."""
    if isinstance(value, list):
        return [_as_photo(v) for v in value]
    return PNG if isinstance(value, (bytes, str)) else value


@pytest.fixture
def api_schema(model_file, tmp_path):
    from facenet.embedder import load_embedder
    from facenet.serve import Limits, create_app
    from facenet.serve.security import Keys

    embedder = load_embedder(model_file, detect=False, backend="torch")
    # the admin key, and no rate limit: every operation in full, many requests in a few seconds
    app = create_app(embedder, tmp_path / "g.db", keys=Keys(admin=KEY), limits=Limits(rate_limit=None))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def filter_body(context, body):
        """A multipart field is text: a name "mutated" into a number arrives as digits, which is a valid
        name, so that mutation cannot be told apart from valid data and is not sent."""
        return not isinstance(body, dict) or isinstance(body.get("name", ""), str)

    @schema.hook
    def map_body(context, body):
        if not isinstance(body, dict):
            return body
        return {k: _as_photo(v) if k in PHOTO_FIELDS else v for k, v in body.items()}

    return schema


def test_the_api_keeps_its_documented_contract(api_schema):
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation, mode in [(op, mode) for op in operations for mode in schemathesis.GenerationMode]:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            case.call_and_validate(headers={"X-API-Key": KEY})

        try:
            call()
        except Unsatisfiable:  # no input to get wrong (GET /healthz ...): nothing negative to send
            assert mode == schemathesis.GenerationMode.NEGATIVE
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures, then report them together
            failures.append(f"{operation.label} ({mode.value} data):\n{exc}")
    assert not failures, "\n\n".join(failures)


def test_errors_are_documented_as_problem_details(api_schema):
    from facenet.serve.openapi import PROBLEM

    document = api_schema.raw_schema
    enrol = document["paths"]["/api/people"]["post"]
    assert {"201", "400", "401", "409", "413", "415", "422", "500", "503"} <= set(enrol["responses"])
    assert PROBLEM in enrol["responses"]["401"]["content"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert enrol["requestBody"]["content"]["multipart/form-data"]["encoding"]["photos"]["contentType"] == "image/*"
