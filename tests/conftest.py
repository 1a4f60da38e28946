"""Shared fixtures. Everything here is made by the tests themselves: no hub, no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the text-embedding cache of the tests out of the user's home."""
    d = tmp_path_factory.mktemp("edgeclip-cache")
    old = os.environ.get("EDGECLIP_CACHE")
    os.environ["EDGECLIP_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("EDGECLIP_CACHE", None)
    else:
        os.environ["EDGECLIP_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _int8_speed_as_asked():
    """``EDGECLIP_TEST_INT8_SPEED=slower`` (or ``faster``) runs the whole suite as on a CPU where every int8 model
    is slower (faster) than fp32: no test may depend on which precision this machine happens to run faster."""
    mode = os.environ.get("EDGECLIP_TEST_INT8_SPEED", "")
    if mode not in ("slower", "faster"):
        yield
        return
    from test_export_fixtures import int8_speed

    with int8_speed(mode):
        yield


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """A small ImageFolder of drawn shapes: {'train': Path, 'test': Path} (6 classes)."""
    from edgeclip.data.synthetic import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=24, n_test=6, size=40)


@pytest.fixture(scope="session")
def tiny_teacher(shapes, tmp_path_factory):
    """A reference-lit teacher checkpoint (real MiniLM text tower, briefly trained image tower).

    Returns the teacher spec string ``reference-lit:/path/teacher.pt``.
    """
    from edgeclip.train.reference import train_reference

    out = tmp_path_factory.mktemp("teacher")
    train_reference(
        str(shapes["train"]),
        out,
        arch="shufflenet_v2_x0_5",
        img_size=32,
        epochs=1,
        batch_size=64,
        progress=False,
        head_hidden=256,
    )
    return f"reference-lit:{out / 'teacher.pt'}"


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data (or $EDGECLIP_SHARED_DATA); skips with the reason when absent."""
    from edgeclip.core.places import shared_data_dir

    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real data folder {d} is absent (a clone without ../shared); set EDGECLIP_SHARED_DATA")
    return d
