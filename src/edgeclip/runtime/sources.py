"""Frame sources for ``edgeclip watch``: a video file (PyAV), a camera device or RTSP/HTTP stream (PyAV), or a
folder of frames (sorted, or followed while a camera drops files into it). No torch.

Every source yields :class:`Frame` objects in order; ``frame.model_input(w, h)`` is the frame scaled for the model
(by FFmpeg's scaler for video, which is much cheaper than a full-size RGB copy) and ``frame.full()`` the frame at
its own size, made only for the frames that are kept. A bad source is one :class:`SourceError` line.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.images import IMAGE_EXTS, load_image

LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(EdgeClipError):
    """A source that cannot be opened or stops."""


@dataclass
class Frame:
    index: int  # frame number in the source (decoded order)
    t: float  # seconds from the start of the source
    full: Callable[[], Image.Image]  # the frame at its own size, RGB
    model_input: Callable[[int, int], Image.Image]  # the frame scaled to (width, height), RGB
    size: tuple[int, int]  # (width, height)
    name: str = ""  # a file name (folder sources)


class Source:
    live = False  # live sources cannot resume from an offset
    kind = "?"

    def frames(self, start: float = 0.0) -> Iterator[Frame]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "live": self.live}


class VideoSource(Source):
    """A video file, a camera device (``/dev/video0``, via v4l2) or a network stream, decoded by PyAV."""

    def __init__(self, spec: str, timeout: float = 10.0):
        self.spec = spec
        self.live = spec.startswith(LIVE_PREFIXES) or spec.startswith("/dev/video")
        self.kind = "stream" if spec.startswith(LIVE_PREFIXES) else ("camera" if self.live else "video")
        if not self.live and not Path(spec).is_file():
            raise SourceError(f"video not found: {spec}")
        self.timeout = timeout

    def _open(self):
        import av

        opts = {"format": "v4l2"} if self.spec.startswith("/dev/video") else {}
        try:
            c = av.open(self.spec, timeout=self.timeout, **opts)
        except av.FFmpegError as e:
            raise SourceError(f"cannot open {self.spec}: {_av_msg(e)}") from None
        if not c.streams.video:
            c.close()
            raise SourceError(f"{self.spec} has no video stream")
        return c

    def frames(self, start: float = 0.0) -> Iterator[Frame]:
        import av

        c = self._open()
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        self.info = {
            "codec": stream.codec_context.name,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate) if stream.average_rate else None,
            "frames": int(stream.frames or 0),
        }
        if start > 0 and not self.live:
            c.seek(int(start / stream.time_base), stream=stream, backward=True)  # the keyframe before start
        n = 0
        try:
            for fr in c.decode(stream):
                t = float(fr.time) if fr.time is not None else n / (self.info["fps"] or 30.0)
                n += 1
                if t + 1e-6 < start:
                    continue
                yield _video_frame(fr, t)
        except av.FFmpegError as e:
            raise SourceError(f"{self.spec}: decoding stopped ({_av_msg(e)})") from None
        finally:
            c.close()

    def describe(self) -> dict:
        return {**super().describe(), "spec": self.spec, **getattr(self, "info", {})}


def _video_frame(fr, t: float) -> Frame:
    index = int(round(t * 1000))  # replaced by the watcher's own count; kept unique per time stamp

    def full() -> Image.Image:
        return fr.to_image()

    def scaled(w: int, h: int) -> Image.Image:
        return fr.to_image(width=w, height=h, interpolation="BICUBIC")

    return Frame(index, t, full, scaled, (fr.width, fr.height))


class FolderSource(Source):
    """Image files of a folder in name order; ``follow``: keep watching for new files (a camera writing frames)
    until ``idle`` seconds pass with none. Time stamps are file order / ``fps``."""

    kind = "folder"

    def __init__(
        self, folder: str, fps: float = 10.0, follow: bool = False, idle: float = 10.0, poll: float = 0.5
    ):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"frame folder not found: {folder}")
        for name, v in (("--folder-fps", fps), ("idle", idle), ("poll", poll)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SourceError(f"{name} must be a number > 0, got {v}")
        self.fps, self.follow, self.idle, self.poll = float(fps), follow, idle, poll
        self.live = follow

    def _names(self) -> list[str]:
        return sorted(
            e.name
            for e in os.scandir(self.folder)
            if Path(e.name).suffix.lower() in IMAGE_EXTS and _is_file(e)
        )

    def frames(self, start: float = 0.0) -> Iterator[Frame]:
        done: set[str] = set()
        i, last_new = 0, time.time()
        while True:
            fresh = [n for n in self._names() if n not in done]
            for name in fresh:
                done.add(name)
                t = i / self.fps
                i += 1
                if t + 1e-9 < start:
                    continue
                yield file_frame(self.folder / name, i - 1, t)
                last_new = time.time()
            if not self.follow:
                return
            if time.time() - last_new > self.idle:
                return
            time.sleep(self.poll)

    def describe(self) -> dict:
        return {**super().describe(), "folder": str(self.folder), "fps": self.fps, "follow": self.follow}


def _is_file(entry: os.DirEntry) -> bool:
    """A regular file (through links); a link loop or an unreadable entry is not a frame."""
    try:
        return entry.is_file()
    except OSError:
        return False


def file_frame(path: Path, index: int, t: float) -> Frame | None:
    cache: dict = {}

    def full() -> Image.Image:
        if "img" not in cache:
            cache["img"] = load_image(path)
        return cache["img"]

    def scaled(w: int, h: int) -> Image.Image:
        img = full()
        return img if img.size == (w, h) else img.resize((w, h), Image.BICUBIC)

    return Frame(index, t, full, scaled, (0, 0), path.name)


def open_frames(spec: str, fps: float = 10.0, follow: bool = False, idle: float = 10.0) -> Source:
    """``SOURCE`` of ``edgeclip watch``: a folder of frames, a video file, ``/dev/videoN`` or a stream URL."""
    if not spec:
        raise SourceError("no source given")
    if spec.startswith(LIVE_PREFIXES) or spec.startswith("/dev/video"):
        return VideoSource(spec)
    p = Path(spec)
    if p.is_dir():
        return FolderSource(spec, fps=fps, follow=follow, idle=idle)
    if not p.exists():
        raise SourceError(
            f"source not found: {spec} (a video file, a frame folder, /dev/videoN or rtsp://...)"
        )
    return VideoSource(spec)


def _av_msg(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def __getattr__(name: str):
    if name == "open_source":  # the earlier name, kept for one release: data.open_source opens still images
        import warnings

        warnings.warn(
            "edgeclip.runtime.sources.open_source is now open_frames (edgeclip.data.open_source opens images)",
            DeprecationWarning,
            stacklevel=2,
        )
        return open_frames
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
