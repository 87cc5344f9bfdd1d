"""The service's response shapes: they validate what the routes return and document the API at /docs."""

from __future__ import annotations

from pydantic import BaseModel

class Face(BaseModel):
    box: list[float]  # x1, y1, x2, y2 in pixels of the uploaded photo
    score: float | None  # detector confidence; None when photos are taken as face crops
    used: bool  # the face that was embedded (the largest)


class PhotoReport(BaseModel):
    filename: str
    width: int
    height: int
    faces: list[Face]


class VerifyResult(BaseModel):
    distance: float  # squared L2, in [0, 4]
    threshold: float
    same: bool
    model: str
    photos: list[PhotoReport]


class EmbedResult(BaseModel):
    model: str
    embeddings: list[list[float]]
    photos: list[PhotoReport]


class MatchOut(BaseModel):
    name: str
    distance: float


class IdentifyResult(BaseModel):
    known: bool
    matches: list[MatchOut]  # nearest first, within the threshold; empty = unknown
    threshold: float
    model: str
    photo: PhotoReport


class ModelOut(BaseModel):
    name: str  # as in every result's "model" field: architecture, embedding size, weights id
    model_id: str  # weights + thresholds: changes when either does; "" for an untracked model
    embedding_size: int
    threshold: float  # squared L2; same person when the distance is below it
    trained_on: str  # from the model file's provenance


class PersonOut(BaseModel):
    name: str
    faces: int
    created: float  # Unix time of enrolment


class PeopleResult(BaseModel):
    model: str
    policy: str  # how a person with several photos is scored (facenet.gallery.policy)
    people: list[PersonOut]


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
