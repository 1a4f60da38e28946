"""Errors that the CLI turns into one clear line instead of a traceback."""


class EdgeClipError(Exception):
    """A user-facing error: bad input, a missing file, a mismatch. One line, no traceback."""


class ImageLoadError(EdgeClipError):
    """An image file that cannot be decoded (missing, corrupt, truncated, unsupported)."""


class CheckpointError(EdgeClipError):
    """A checkpoint of the wrong kind, or one that does not match what it is loaded into."""


class CorruptFileError(EdgeClipError, ValueError):
    """An artefact (JSON metadata, manifest, stage record) that cannot be parsed. Also a ValueError, so code that
    falls back on a broken optional file keeps doing so."""


class CacheMismatchError(EdgeClipError):
    """A teacher-embedding cache built with another teacher or preprocessing."""
