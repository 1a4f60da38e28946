"""`edgeclip watch`: rules against the ground truth of a generated H.264 video (which photo is shown when), resume
after a stop, frame folders, and bad sources / rules files as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.core.errors import EdgeClipError
from edgeclip.lab.video import make_slideshow, precision_recall
from edgeclip.runtime import load_bundle
from edgeclip.runtime.sources import SourceError, open_frames
from edgeclip.runtime.watch import load_rules, watch

CLASSES = ["circle", "square", "star", "ring"]


def feature_bundle(tiny_teacher, shapes, out: Path) -> Path:
    """A bundle whose student tells the test photos apart: the one-epoch test student maps every shape to nearly the
    same embedding, so the trigger test uses a randomly initialised ShuffleNetV2 whose BatchNorm statistics are
    fitted to the data (40 steps at a learning rate of 1e-12): random features separate different photos (cosine
    ~0.9) and give 1.0 for the same one. What is tested here is the watcher, not the student."""
    from edgeclip.export.bundle import export_bundle
    from edgeclip.train.distill import DistillConfig, distill

    distill(
        DistillConfig(
            teacher=tiny_teacher,
            data=str(shapes["train"]),
            out=str(out / "student"),
            student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 0},
            train={"max_steps": 40, "batch_size": 16, "lr": 1e-12, "warmup_epochs": 0},
        ),
        progress=False,
    )
    export_bundle(out / "student" / "student.pt", out / "bundle", CLASSES, quant="none")
    return out / "bundle"


@pytest.fixture(scope="module")
def video(tmp_path_factory, tiny_teacher, shapes):
    d = tmp_path_factory.mktemp("video")
    tb = {"bundle": feature_bundle(tiny_teacher, shapes, d)}
    pick = {c: sorted((Path(shapes["test"]) / c).glob("*.jpg"))[0] for c in CLASSES}
    order = ["circle", "square", "circle", "star", "ring", "square", "star", "circle"]
    truth = make_slideshow([(pick[c], 1.0, c) for c in order], d / "slides.mp4", size=(160, 160), fps=10)
    rules = {
        "sample": {"every": 1},
        "batch": 4,
        "smoothing": 1.0,
        "scale": 100,
        "rules": [
            {"name": c, "examples": [str(pick[c])], "threshold": 0.4, "min_duration": 0.2, "max_frames": 50}
            for c in CLASSES
        ],
    }
    return {"tb": tb, "truth": truth, "rules": rules, "pick": pick, "dir": d}


def test_the_rules_fire_in_the_right_segments(video, tmp_path):
    truth = video["truth"]
    assert truth["frames"] == 80 and len(truth["segments"]) == 8
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    s = watch(truth["path"], lab, load_rules(video["rules"]), tmp_path / "out", progress=False)
    assert s["decoded"] == 80 and s["sampled"] == 80 and s["stopped"] == "end of source"
    assert (
        s["source"]["codec"] == "h264"
        and s["fps_end_to_end"] > 0
        and s["latency_ms"]["p95"] >= s["latency_ms"]["p50"]
    )
    pr = precision_recall(tmp_path / "out" / "events.jsonl", truth, {c: c for c in CLASSES})
    for c in CLASSES:
        assert pr[c]["precision"] >= 0.9 and pr[c]["recall"] == 1.0, (c, pr[c])
    # every kept frame is a JPEG named in the event log, every started event ended
    rows = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    for r in rows:
        if r["type"] == "frame":
            assert (tmp_path / "out" / r["file"]).stat().st_size > 0
    assert sum(r["type"] == "start" for r in rows) == sum(r["type"] == "end" for r in rows) == s["events"]


def _watch(video, rules: dict, out: Path) -> dict:
    """The test video through the watcher with ``rules``, quietly."""
    return watch(
        video["truth"]["path"],
        load_bundle(video["tb"]["bundle"], threads=1),
        load_rules(rules),
        out,
        progress=False,
    )


def test_every_frame_of_a_file_is_counted_when_sampling(video, tmp_path):
    """Sampling every 7th frame of the 80-frame video: 12 labeled, and all 80 decoded (the 2 after the last sampled
    frame too)."""
    rules = json.loads(json.dumps(video["rules"]))
    rules["sample"] = {"every": 7}
    s = _watch(video, rules, tmp_path / "a")
    assert s["sampled"] == 12 and s["decoded"] == 80 and s["stopped"] == "end of source"


def test_min_duration_cooldown_and_caps(video, tmp_path):
    rules = json.loads(json.dumps(video["rules"]))
    for r in rules["rules"]:
        r.update(min_duration=5.0)  # no photo is shown for 5 s: nothing fires
    s = _watch(video, rules, tmp_path / "a")
    assert s["events"] == 0 and s["kept_frames"] == 0
    rules = json.loads(json.dumps(video["rules"]))
    rules["keep"] = {"max_frames": 3}
    s = _watch(video, rules, tmp_path / "b")
    assert (
        s["kept_frames"] == 3
        and s["dropped_by_caps"] > 0
        and len(list((tmp_path / "b/frames").iterdir())) == 3
    )
    rules = json.loads(json.dumps(video["rules"]))
    rules["rules"][0]["cooldown"] = 100.0  # circle fires once, then never again in this video
    s = _watch(video, rules, tmp_path / "c")
    assert s["events_per_rule"]["circle"] == 1 and s["events_per_rule"]["square"] == 2


COUNTS = (
    "decoded",
    "sampled",
    "events",
    "kept_frames",
    "dropped_by_caps",
    "events_per_rule",
    "kept_per_rule",
)


def _same_run(a: Path, b: Path, sa: dict, sb: dict) -> bool:
    """Two watch outputs are the same run: events.jsonl line for line, the kept files byte for byte, the counts."""
    ea, eb = (a / "events.jsonl").read_text(), (b / "events.jsonl").read_text()
    assert ea == eb, (ea, eb)
    fa = {p.name: p.read_bytes() for p in (a / "frames").glob("*.jpg")}
    fb = {p.name: p.read_bytes() for p in (b / "frames").glob("*.jpg")}
    assert fa.keys() == fb.keys() and fa == fb
    assert {k: sa[k] for k in COUNTS} == {k: sb[k] for k in COUNTS}
    assert all(json.loads(x).get("duration", 0) >= 0 for x in ea.splitlines())
    return True


def test_a_file_source_resumes_after_a_stop(video, tmp_path):
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    r = load_rules({**video["rules"], "sample": {"fps": 5}})
    first = watch(video["truth"]["path"], lab, r, tmp_path / "o", max_frames=12, progress=False)
    assert first["sampled"] == 12
    rest = watch(video["truth"]["path"], lab, r, tmp_path / "o", resume=True, progress=False)
    assert (
        rest["resumed_from"] > 2.0 and rest["sampled"] == 40
    )  # 8 s at 5 fps, none twice; the whole run's count
    whole = watch(video["truth"]["path"], lab, r, tmp_path / "whole", progress=False)
    assert _same_run(tmp_path / "o", tmp_path / "whole", rest, whole)
    other = make_slideshow(
        [(video["pick"]["ring"], 0.5, "ring")], tmp_path / "other.mp4", size=(40, 40), fps=10
    )
    with pytest.raises(EdgeClipError, match="watched another source"):
        watch(other["path"], lab, r, tmp_path / "o", resume=True, progress=False)


def test_a_frame_folder_and_the_cli(video, tmp_path, capsys):
    from edgeclip.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, c in enumerate(["circle", "circle", "circle", "square", "square", "square"]):
        (frames / f"{i:03d}.jpg").write_bytes(video["pick"][c].read_bytes())
    (frames / "notes.txt").write_text("not a frame")
    rules = tmp_path / "rules.yaml"
    import yaml

    rules.write_text(yaml.safe_dump(video["rules"]))
    args = ["watch", str(frames), "--bundle", str(video["tb"]["bundle"]), "--rules", str(rules)]
    args += ["--out", str(tmp_path / "w"), "--folder-fps", "5", "--no-progress"]
    main(args)
    cap = capsys.readouterr()  # without --json: nothing on stdout, one line on stderr
    assert cap.out == "" and "watched 6 frames" in cap.err and len(cap.err.strip().splitlines()) == 1
    main([*args, "--json"])
    s = json.loads(capsys.readouterr().out)
    assert s["sampled"] == 6 and s["events_per_rule"]["circle"] == 1 and s["events_per_rule"]["square"] == 1


def test_bad_sources_and_rules_are_one_line(video, tmp_path):
    with pytest.raises(SourceError, match="source not found"):
        open_frames(str(tmp_path / "nope.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    s = watch(str(junk), lab, load_rules(video["rules"]), tmp_path / "j", progress=False)
    assert s["stopped"] == "source error" and "\n" not in s["error"] and "cannot open" in s["error"]
    for bad, msg in [
        ({"rules": []}, "needs `rules:`"),
        ({"rules": [{"name": "a", "query": "x", "examples": ["e.jpg"]}]}, "exactly one of"),
        ({"rules": [{"name": "a", "query": "x"}]}, "softmax over one query"),
        (
            {"rules": [{"name": "a", "query": "x", "threshold": "high"}], "score": "cosine"},
            "must be a number",
        ),
        (
            {"rules": [{"name": "a", "query": "x"}], "score": "cosine", "sample": {"fps": 0}},
            "sample.fps must be in",
        ),
        ({"rules": [{"name": "a", "query": "x", "colour": 1}], "score": "cosine"}, "unknown .*keys"),
        # types and ranges, from the strict reader
        ({"rules": [{"name": "a", "query": ["x", "y"]}], "score": "cosine"}, r"query must be text"),
        ({"rules": {"name": "a"}}, "needs `rules:`"),
        ({"rules": [{"name": "a", "query": "x"}], "score": "cosine", "keep": 5}, "keep must be a mapping"),
        ({"rules": [{"name": "a", "query": "x"}], "score": "cosine", "batch": "8"}, "batch must be a whole"),
        ({"rules": [{"name": "a", "query": "x", "threshold": -1}, {"name": "b", "query": "y"}]}, r"\[0, 1\]"),
        ({"rules": [{"name": "a", "query": "x", "threshold": 5}], "score": "cosine"}, r"\[-1, 1\]"),
        ({"rules": [{"name": "a", "query": "x", "max_frames": 2.5}], "score": "cosine"}, "whole number"),
        (
            {"rules": [{"name": "a/b", "query": "x"}, {"name": "a:b", "query": "y"}]},
            "make the same file name",
        ),
        ({"rules": [{"name": "a", "query": "x"}, {"name": "a", "query": "y"}]}, "are both called"),
        ({"rules": [{"name": "a", "query": "x"}], "score": "cosine", "keep": {"quality": 0}}, "quality"),
    ]:
        with pytest.raises(EdgeClipError, match=msg):
            load_rules(bad)
    r = load_rules({"rules": [{"name": "a", "query": "a zebra"}], "score": "cosine"})
    with pytest.raises(EdgeClipError, match="no text tower"):
        watch(video["truth"]["path"], lab, r, tmp_path / "z", progress=False)


def test_ctrl_c_ends_cleanly_with_a_summary(video, tmp_path):
    """Ctrl-C in the middle of an event: the event is closed, the summary and the resume state are written."""
    from edgeclip.runtime.sources import Source

    inner = open_frames(video["truth"]["path"])

    class Interrupted(Source):
        kind = "video"

        def frames(self, start=0.0):
            for i, f in enumerate(inner.frames(start)):
                if i == 25:  # inside the second circle segment (2-3 s)
                    raise KeyboardInterrupt
                yield f

        def describe(self):
            return inner.describe()

    lines = []
    s = watch(
        Interrupted(),
        load_bundle(video["tb"]["bundle"], threads=1),
        load_rules(video["rules"]),
        tmp_path / "i",
        progress=True,
        log=lines.append,
    )
    # the unfinished batch (frame 25 of batches of 4) is abandoned, not half-labeled: 6 whole batches remain
    assert s["stopped"] == "interrupted" and s["decoded"] == 24 and s["sampled"] == 24
    rows = [json.loads(x) for x in (tmp_path / "i" / "events.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "start" for r in rows) == sum(r["type"] == "end" for r in rows) >= 2
    assert (tmp_path / "i" / "summary.json").is_file() and json.loads(
        (tmp_path / "i" / "state.json").read_text()
    )["t"] > 2
    assert any("fps" in ln and "latency p50" in ln for ln in lines) and "interrupted" in lines[-1]
    # --resume goes on with the open event: the same run as one never interrupted
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    rest = watch(
        video["truth"]["path"], lab, load_rules(video["rules"]), tmp_path / "i", resume=True, progress=False
    )
    whole = watch(video["truth"]["path"], lab, load_rules(video["rules"]), tmp_path / "w", progress=False)
    assert _same_run(tmp_path / "i", tmp_path / "w", rest, whole)


class Crash(BaseException):
    """A process killed where it stands (SIGKILL): nothing after it runs, no state is saved."""


@pytest.mark.parametrize(
    "when", [("start", 1), ("frame", 3), ("frame", 7), ("end", 2), ("process", 4), ("sigint", 5)]
)
def test_a_watch_killed_at_any_point_resumes_into_the_same_run(video, tmp_path, monkeypatch, when):
    """Fault injection: the watcher dies at the n-th event start / kept frame / event end / batch (mid-batch, with
    some of its records written); --resume then yields the same events.jsonl, kept files and counts as a run never
    killed, with a keep cap in play (the cap must not restart)."""
    from edgeclip.runtime import watch as wmod

    rules = {**video["rules"], "keep": {"max_frames": 9}}
    lab = load_bundle(video["tb"]["bundle"], threads=1)
    whole = watch(video["truth"]["path"], lab, load_rules(rules), tmp_path / "whole", progress=False)
    kind, n = when
    calls = {"n": 0}
    if kind in ("process", "sigint"):
        orig = wmod.Watcher.process

        def dying(self, frames, decoded_at, images):
            calls["n"] += 1
            if calls["n"] == n:
                orig(self, frames[:2], decoded_at[:2], images[:2])  # half the batch is written, then the end
                raise Crash if kind == "process" else KeyboardInterrupt  # a kill, or Ctrl-C mid-batch
            return orig(self, frames, decoded_at, images)

        monkeypatch.setattr(wmod.Watcher, "process", dying)
    else:
        orig_write = wmod.Watcher._write

        def dying_write(self, rec):
            orig_write(self, rec)
            if rec["type"] == kind:
                calls["n"] += 1
                if calls["n"] == n:
                    raise Crash

        monkeypatch.setattr(wmod.Watcher, "_write", dying_write)
    if kind == "sigint":  # the half-labeled batch is abandoned, never also finished: durations stay >= 0
        s = watch(video["truth"]["path"], lab, load_rules(rules), tmp_path / "k", progress=False)
        assert s["stopped"] == "interrupted"
    else:
        with pytest.raises(Crash):
            watch(video["truth"]["path"], lab, load_rules(rules), tmp_path / "k", progress=False)
    monkeypatch.undo()
    rest = watch(video["truth"]["path"], lab, load_rules(rules), tmp_path / "k", resume=True, progress=False)
    assert _same_run(tmp_path / "k", tmp_path / "whole", rest, whole)
    assert whole["kept_frames"] == 9 and whole["dropped_by_caps"] > 0


def test_a_followed_folder_picks_up_frames_a_camera_writes(video, tmp_path):
    """--follow: frames written while the watcher runs are labeled in name order; it stops after `idle` seconds
    without a new one."""
    import threading
    import time

    from edgeclip.runtime.sources import FolderSource

    d = tmp_path / "cam"
    d.mkdir()

    def camera():
        for i, c in enumerate(["circle"] * 4 + ["square"] * 4):
            time.sleep(0.05)
            tmp = d / f".{i:03d}.tmp"
            tmp.write_bytes(video["pick"][c].read_bytes())
            tmp.rename(d / f"{i:03d}.jpg")  # a camera that writes atomically

    t = threading.Thread(target=camera)
    t.start()
    src = FolderSource(str(d), fps=5, follow=True, idle=1.0, poll=0.05)
    s = watch(
        src,
        load_bundle(video["tb"]["bundle"], threads=1),
        load_rules(video["rules"]),
        tmp_path / "o",
        progress=False,
    )
    t.join()
    assert s["sampled"] == 8 and s["events_per_rule"]["circle"] == 1 and s["events_per_rule"]["square"] == 1


def test_bad_frames_folder_fps_and_sources_via_the_cli(video, tmp_path, capsys):
    """An unreadable frame and a link loop in a frame folder are skipped and counted; --folder-fps 0 or -5 is one
    line; an unreadable video exits 2 with its summary written."""
    import os

    from edgeclip.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, c in enumerate(["circle", "circle", "square", "square"]):
        (frames / f"{i:03d}.jpg").write_bytes(video["pick"][c].read_bytes())
    (frames / "002b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    os.symlink(frames / "loop.jpg", frames / "loop.jpg")  # a link to itself
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(video["rules"]))
    base = ["watch", "--bundle", str(video["tb"]["bundle"]), "--rules", str(rules), "--no-progress"]

    def run(*args):
        try:
            main([*base, *map(str, args)])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    code, out, err = run(frames, "--out", tmp_path / "w", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["sampled"] == 4 and s["unreadable_frames"] == 1 and "skipped 1 unreadable frames" in err
    for fps in ("0", "-5"):
        code, out, err = run(frames, "--out", tmp_path / "w2", "--folder-fps", fps)
        assert code == 2 and err.startswith("error: --folder-fps must be a number > 0"), err
        assert len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    code, out, err = run(junk, "--out", tmp_path / "j")
    assert code == 2 and "Traceback" not in err and (tmp_path / "j" / "summary.json").is_file()
    assert err.strip().splitlines()[-1].startswith("error:") and "cannot open" in err
