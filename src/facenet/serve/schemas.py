"""The service's response shapes: they validate what the routes return and document the API at /docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BOX_A, BOX_B = [412.3, 188.0, 598.7, 421.5], [903.1, 240.6, 1050.2, 431.9]  # the examples' two faces


class Face(BaseModel):
    box: list[float]  # x1, y1, x2, y2 in pixels of the uploaded photo
    score: float | None  # detector confidence; None when photos are taken as face crops
    used: bool  # embedded: a face the answer is about (the largest, or as `which` asked)


class PhotoReport(BaseModel):
    filename: str
    width: int
    height: int
    faces: list[Face]


class FaceOut(BaseModel):
    """A face an answer is about."""

    box: list[float]  # x1, y1, x2, y2 in pixels of the uploaded photo
    score: float | None  # detector confidence; None when photos are taken as face crops
    notes: list[str]  # why its answer may be wrong (tiny, turned sideways, mostly outside the photo); [] = none


class VerifyResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "distance": 0.0712,
                    "threshold": 0.1837,
                    "same": True,
                    "model": "reid_mobilenet-256d-e98ad4ce4936f086",
                    "photos": [
                        {
                            "filename": "a.jpg",
                            "width": 1600,
                            "height": 1200,
                            "faces": [{"box": BOX_A, "score": 0.9998, "used": True}],
                        },
                        {
                            "filename": "b.jpg",
                            "width": 1200,
                            "height": 900,
                            "faces": [{"box": [30.0, 22.5, 61.0, 60.2], "score": 0.9101, "used": True}],
                        },
                    ],
                    "faces": [
                        {"box": BOX_A, "score": 0.9998, "notes": []},
                        {
                            "box": [30.0, 22.5, 61.0, 60.2],
                            "score": 0.9101,
                            "notes": [
                                "the face is only 31x38 px (under 38 px, a quarter of the model's input): "
                                "its answer is unreliable"
                            ],
                        },
                    ],
                }
            ]
        }
    )

    distance: float  # squared L2, in [0, 4]
    threshold: float
    same: bool
    model: str
    photos: list[PhotoReport]
    faces: list[FaceOut]  # the face compared in each photo: a, then b
    compared_as: str = "plain"  # "masked": one face masked, the other not; the model's masked threshold used


class EmbedResult(BaseModel):
    model: str
    embeddings: list[list[float]]
    photos: list[PhotoReport]


OPEN_SET_EXAMPLE = {
    "threshold": 0.1484,
    "asked_far": 0.01,
    "expected_far": 0.01,
    "expected_tar": 0.912,
    "comparisons": 120,
    "met": True,
    "calibrated": True,
    "compared_as": "plain",
    "note": None,
}


class OpenSetOut(BaseModel):
    """What the gallery's current size gets with this model at the asked stranger false-accept rate, from the
    model's FAR calibration (``facenet.evaluate.calibrate.OpenSetPromise``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [OPEN_SET_EXAMPLE]})

    threshold: float  # the open-set threshold (squared L2) that keeps the asked rate
    asked_far: float  # the chance a stranger may be taken for someone enrolled, as asked
    expected_far: float | None  # the chance this gallery size gives (None: the model has no calibration)
    expected_tar: float | None  # the share of enrolled people's photos identified (None: not recorded)
    comparisons: int  # single-photo comparisons a stranger's query counts as under the gallery's policy
    met: bool  # false: the asked rate cannot be kept (beyond the model's calibration, or none)
    calibrated: bool  # false: the model has no FAR calibration; the verification threshold is used
    compared_as: str = "plain"  # "masked": the promise for a masked face, from the model's masked table
    note: str | None = None  # one sentence when met is false


class MatchOut(BaseModel):
    name: str
    distance: float


class IdentifiedFace(FaceOut):
    known: bool
    matches: list[MatchOut]  # nearest first, within the threshold; empty = unknown
    threshold: float | None = None  # this face's: a masked face has its own
    compared_as: str = "plain"  # "masked": the face is masked, so the model's masked threshold was used


class IdentifyResult(BaseModel):
    """Who is in the photo: ``faces`` answers for every face asked for (``which``). ``known`` and
    ``matches`` repeat the answer for ``faces[0]``, the face the model's recipe chooses (the largest), as
    before ``faces`` existed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "known": True,
                    "matches": [{"name": "Ann", "distance": 0.0655}],
                    "threshold": 0.1484,
                    "model": "reid_mobilenet-256d-e98ad4ce4936f086",
                    "photo": {
                        "filename": "party.jpg",
                        "width": 1600,
                        "height": 1200,
                        "faces": [
                            {"box": BOX_B, "score": 0.9999, "used": True},
                            {"box": BOX_A, "score": 0.9998, "used": True},
                        ],
                    },
                    "faces": [
                        {
                            "box": BOX_A,
                            "score": 0.9998,
                            "notes": [],
                            "known": True,
                            "matches": [{"name": "Ann", "distance": 0.0655}],
                            "threshold": 0.1484,
                            "compared_as": "plain",
                        },
                        {
                            "box": BOX_B,
                            "score": 0.9999,
                            "notes": [],
                            "known": False,
                            "matches": [],
                            "threshold": 0.1484,
                            "compared_as": "plain",
                        },
                    ],
                    "open_set": OPEN_SET_EXAMPLE,
                }
            ]
        }
    )

    known: bool  # faces[0]'s
    matches: list[MatchOut]  # faces[0]'s
    threshold: float  # faces[0]'s
    model: str
    photo: PhotoReport
    faces: list[IdentifiedFace]  # the recipe's choice first, then by detector score
    open_set: OpenSetOut | None  # faces[0]'s promise; None when the request set its own threshold


class ModelOut(BaseModel):
    name: str  # as in every result's "model" field: architecture, embedding size, weights id
    model_id: str  # weights + thresholds: changes when either does; "" for an untracked model
    embedding_size: int
    threshold: float  # squared L2; same person when the distance is below it
    trained_on: str  # from the model file's provenance
    open_set: OpenSetOut | None  # at the gallery's current size; None while the gallery loads or cannot be read
    open_set_masked: OpenSetOut | None = None  # the same for masked faces; None also for a model without a masked table


class PersonOut(BaseModel):
    name: str
    faces: int
    created: float  # Unix time of enrolment


class PeopleResult(BaseModel):
    model: str
    policy: str  # how a person with several photos is scored (facenet.gallery.policy)
    people: list[PersonOut]
    open_set: OpenSetOut  # what identification promises at this gallery's size
    open_set_masked: OpenSetOut | None = None  # the same for masked faces (None: the model has no masked table)


class RemoveResult(BaseModel):
    name: str
    faces_removed: int


class ClusterMember(BaseModel):
    index: int  # position of the photo in the request
    filename: str


class Skipped(ClusterMember):
    detail: str


class ClusterResult(BaseModel):
    threshold: float
    clusters: list[list[ClusterMember]]  # largest first
    unclustered: list[ClusterMember]
    skipped: list[Skipped]  # photos without a usable face


class Status(BaseModel):
    status: str
