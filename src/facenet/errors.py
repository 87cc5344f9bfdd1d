"""One exception family for everything the project raises on purpose.

The CLI and the HTTP service catch ``FaceNetError`` and show its message as one
line; anything else is a bug and keeps its traceback.
"""


class FaceNetError(Exception):
    """Root of the project's errors; the message says what went wrong and what to do."""


class BadImageError(FaceNetError):
    """An input is not a readable image (missing, empty, truncated, too large, not an image)."""


class NoFaceError(FaceNetError):
    """The detector found no face in an image."""


class ModelFileError(FaceNetError):
    """A model file is missing, corrupt, or does not describe a known architecture."""


class DataError(FaceNetError):
    """A dataset folder, pairs file or other input data is malformed."""


class GalleryError(FaceNetError):
    """A gallery file is corrupt, foreign, or incompatible with the model in use."""


class TrainingError(FaceNetError):
    """Training cannot go on (embedding collapse, bad configuration, unusable checkpoint)."""


class GalleryUnavailableError(GalleryError):
    """The gallery's database server cannot be reached right now; retrying later may succeed."""


class VideoError(FaceNetError):
    """A video source cannot be opened or read (missing, not a video, truncated, corrupt, a stream gone)."""
