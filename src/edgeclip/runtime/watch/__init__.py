"""``edgeclip watch``: label a video, camera or frame folder in real time on the device and keep the frames that
match (numpy + Pillow + ONNX Runtime + PyAV; no torch).

- :mod:`.rules`: the rules file (what to look for, how to score it, what to keep), strictly read;
- :mod:`.events`: the :class:`Watcher`, which turns smoothed scores into events and kept frames, and checkpoints;
- :mod:`.loop`: :func:`watch`, the decode -> sample -> batch -> label -> checkpoint loop with resume.
"""

from edgeclip.runtime.watch.events import Watcher
from edgeclip.runtime.watch.loop import STATE_FORMAT, Prefetch, watch
from edgeclip.runtime.watch.rules import Rule, Rules, load_rules, safe_name

__all__ = ["STATE_FORMAT", "Prefetch", "Rule", "Rules", "Watcher", "load_rules", "safe_name", "watch"]
