"""An EdgeVL student's other modality as a bundle's image model: the standalone model for that input and the
runtime preprocessing (``preprocess.json``) that reads it - its spec, normalisation, the channels its files hold
and, for a colour-map adapter, the map itself."""

from __future__ import annotations

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.modality import read_array
from edgeclip.runtime.preprocess import NumpyPreprocess


def modality_model(loaded, student: str, modality: str, calib: str | None):
    """An EdgeVL student's standalone model for ``modality`` (its learned conv adapter inside when it has one) and
    the runtime preprocessing that reads that input: the modality's spec, its normalisation, the channels its files
    hold (read from the first calibration image; any count without one), the colour map of a colormap adapter.
    ``loaded``: the student checkpoint as the export already loaded it (:func:`load_student`), not read again."""
    from edgeclip.data.sources import open_source
    from edgeclip.models.pair import modality_student, pair_from_student

    pm, pp, _ = pair_from_student(loaded, student)
    model = modality_student(pm, modality)  # an unknown modality: its one-line error, with the ones it has
    spec = pm.specs[modality]
    in_ch = None
    if calib and spec.bands is None:
        src = open_source(calib)
        first = next(iter(src), None)
        if first is None:
            raise EdgeClipError(f"no calibration images in {calib}")
        arr = read_array(first.data if first.data is not None else first.path)
        in_ch = int(arr.shape[-1]) if arr.ndim == 3 else 1
    d = {
        "size": pp.size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "resize": "shortest",
        "interpolation": "bilinear",  # as training resizes a modality's float maps (antialiased)
        "modality": spec.to_dict(),
        "in_channels": in_ch,
    }
    if spec.adapter == "colormap":
        import matplotlib

        d["colormap_lut"] = matplotlib.colormaps[spec.colormap](np.linspace(0, 1, 256))[:, :3].tolist()
    return model.eval(), NumpyPreprocess.from_dict(d), d
