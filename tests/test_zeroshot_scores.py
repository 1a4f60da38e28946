"""The shared zero-shot and retrieval scores, against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import check_templates, class_names, parse_labels
from edgeclip.zeroshot.scores import accuracy, retrieval, topk


def test_topk_and_accuracy_by_hand():
    classes = np.eye(3, dtype=np.float32)  # class c points along axis c
    imgs = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 1.0], [0.1, 0.8, 0.9], [5.0, 0.0, 0.1]], np.float32)
    top = topk(imgs, classes, 2)
    assert top.tolist() == [[0, 1], [2, 1], [2, 1], [0, 2]]
    acc = accuracy(
        top, [0, 2, 1, 1]
    )  # images 0, 1 right at top-1; 2 at rank 2; 3 wrong (class 1 not in top-2)
    assert acc == {"top1": 0.5, "top5": 0.75}
    assert accuracy(top[:0], []) == {"top1": 0.0, "top5": 0.0}
    with pytest.raises(EdgeClipError, match="embedding sizes differ"):
        topk(imgs, np.eye(4), 1)


def test_retrieval_recall_by_hand():
    # 3 images along the axes; 5 captions: image 0 has captions 0, 1; image 1 has 2, 3; image 2 has 4
    imgs = np.eye(3, dtype=np.float32)
    caps = np.array(
        [
            [1.0, 0.0, 0.0],  # cap 0 -> image 0 exactly
            [0.0, 1.0, 0.1],  # cap 1 (of image 0) looks like image 1
            [0.2, 1.0, 0.0],  # cap 2 -> image 1
            [0.0, 0.1, 1.0],  # cap 3 (of image 1) looks like image 2
            [0.9, 0.0, 0.5],  # cap 4 (of image 2) looks more like image 0
        ],
        np.float32,
    )
    r = retrieval(imgs, caps, [0, 0, 1, 1, 2], ks=(1, 2, 5))
    # i2t: image 0 -> nearest caption 0 (own): rank 1. image 1 -> caption 1 (0.995) then 2 (0.98, own): rank 2.
    # image 2 -> caption 3 (0.995, not own), then caption 4 (0.486, own): rank 2.
    assert (r["i2t_r1"], r["i2t_r2"], r["i2t_r5"]) == (pytest.approx(1 / 3), 1.0, 1.0)
    # t2i: cap 0 -> image 0 (own) r1; cap 1 -> image 1 first, image 0 third (cos 0); cap 2 -> image 1 r1;
    # cap 3 -> image 2 first, image 1 second; cap 4 -> image 0 first, image 2 second
    assert (r["t2i_r1"], r["t2i_r2"], r["t2i_r5"]) == (pytest.approx(2 / 5), pytest.approx(4 / 5), 1.0)
    with pytest.raises(EdgeClipError, match="caption->image"):
        retrieval(imgs, caps, [0, 1])


def test_templates_and_labels_are_checked_in_one_place():
    assert check_templates([]) == ["a photo of a {}."]
    for bad in ("a photo", "a {} of a {}", "a photo of {label}", "a {0} photo", "broken {"):
        with pytest.raises(EdgeClipError, match="template"):
            check_templates([bad])
    assert parse_labels(" cat , dog,cat,, big   truck ") == ["cat", "dog", "big truck"]
    with pytest.raises(EdgeClipError, match="empty"):
        parse_labels(" , ")
    assert class_names(["pickup_truck", "cat"]) == ["pickup truck", "cat"]
    # EuroSAT's folders read as words a text tower knows; acronyms and lower-case-first names stay
    assert class_names(["AnnualCrop", "SeaLake", "Forest", "ATM", "iPhone"]) == [
        "annual crop",
        "sea lake",
        "forest",
        "ATM",
        "iPhone",
    ]


@pytest.mark.parametrize(
    "template,label,want",
    [
        ("a photo of a {}.", "a truck", "a photo of a truck."),
        ("a photo of a {}.", "an apple", "a photo of an apple."),
        ("a photo of the {}.", "the Eiffel tower", "a photo of the Eiffel tower."),
        ("a photo of a {}.", "truck", "a photo of a truck."),
        ("a photo of {}.", "a truck", "a photo of a truck."),
        ("{}", "a truck", "a truck"),
        ("a photo of a {}.", "a", "a photo of a a."),  # a one-word label is the label
        ("a blurry photo of a {}", "A red car", "a blurry photo of A red car"),
    ],
)
def test_templates_do_not_double_the_article(template, label, want):
    from edgeclip.core.prompts import fill

    assert fill(template, label) == want
