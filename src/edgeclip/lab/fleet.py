"""The fleet simulation (``experiments/fleet.yaml``, issue 31): many devices, a bad link, a collector that dies.

- Footage: each simulated device watches its own H.264 video of real Flickr8k test photos (a seeded sample, each
  photo shown in several segments, pools overlapping between devices), so scenes repeat within a car and across
  cars, and every frame's photo (hence its five captions, the ground truth) is known.
- Devices: ``edgeclip watch`` processes with the shipped int8 student bundle and its text tower, text-query rules
  with novelty selection, uploading with ``--upload`` through a fault-injecting TCP proxy on loopback
  (:class:`FaultProxy`: dropped requests, delayed and reset responses, the last after the collector stored the
  event, so the device retries something already stored).
- Collector: ``edgeclip collect serve`` as a process with the shipped teacher, SIGKILLed mid-run and restarted; a
  campaign is pushed mid-run.
- Afterwards: every key a device kept against every key the collector stored (lost, duplicated), seconds from
  kept to searchable, the teacher cascade's precision against the captions, near-duplicate groups against the
  photos; ingest throughput of one collector process on SQLite and PostgreSQL, and of two on one PostgreSQL.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.lab.fleet_sim import CollectorProcess, FaultProxy, child_env, edgeclip_cmd


# ------------------------------------------------------------------------------------------ footage and truth
def _word_re(words: list[str]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def _footage(cfg: dict, out: Path) -> tuple[list[dict], dict[str, list[str]]]:
    """One slideshow per device from overlapping seeded pools of Flickr8k test photos; -> (videos, captions by
    photo path)."""
    from edgeclip.data.captions import load_captions
    from edgeclip.lab.video import make_slideshow

    cs = load_captions(cfg["captions"], cfg.get("images"), cfg.get("split", "test"))
    captions = {str(it.record().path): list(it.captions) for it in cs.items}
    photos = sorted(captions)
    rng = random.Random(int(cfg.get("seed", 0)))
    shared = rng.sample(photos, int(cfg.get("shared_photos", 12)))  # seen by every car
    videos = []
    for d in range(int(cfg.get("devices", 8))):
        own = rng.sample(photos, int(cfg.get("photos_per_device", 12)))
        pool = shared[: len(shared) // 2] + own
        order = [pool[i % len(pool)] for i in range(int(cfg.get("segments", 40)))]
        rng.shuffle(order)
        path = out / "videos" / f"car-{d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        v = make_slideshow(
            [(p, float(cfg.get("seconds_per_photo", 1.5)), Path(p).stem) for p in order],
            path,
            size=tuple(cfg.get("size", [320, 240])),
            fps=int(cfg.get("fps", 10)),
        )
        videos.append(v)
    return videos, captions


def _photo_at(video: dict, t: float) -> str | None:
    for sg in video["segments"]:
        if sg["start"] - 1e-6 <= t < sg["end"] + 1e-6:
            return sg["image"]
    return None


# ------------------------------------------------------------------------------------------ the run
def fleet_benchmark(cfg: dict, out: Path) -> dict[str, Any]:
    """The whole simulation, as named steps; -> the results (the module docstring says what is measured)."""
    out, t_start = Path(out), time.time()
    videos, captions = _footage(cfg, out)
    dim, teacher_id = _teacher_facts(cfg["bundle"])
    store, tokens = _fresh_store(out / "store", dim, teacher_id, len(videos))
    collector = CollectorProcess(str(out / "store"), cfg["teacher"], None, out / "collector.log").start()
    f = cfg.get("faults", {})
    proxy = FaultProxy(
        collector.port, int(cfg.get("seed", 0)), f.get("drop", 0.05), f.get("delay", 0.1), f.get("reset", 0.05),
        f.get("max_delay", 1.0),
    ).start()  # fmt: skip
    devices = _start_devices(cfg, out, videos, tokens, proxy.port)
    collector, down, version = _outage_and_campaign(cfg, out, store, collector)
    summaries = _device_summaries(cfg, devices)
    t_devices = time.time() - t_start
    st = _rescored(cfg, collector)
    collector.stop()
    proxy.stop()

    kept, truth_of = _kept_keys(out, videos)
    rows = store._execute("SELECT key, device, rule, t, verdict, grp FROM events")
    stored = [r[0] for r in rows]
    words = {r["name"]: _word_re(r["words"]) for r in cfg["truth"]}
    tally = _Tally()
    for key, _dev, rule, _t, verdict, _g in rows:
        photo = truth_of.get(key, (None, rule, None))[2]
        if rule in words and photo is not None:
            tally.add(
                rule, any(words[rule].search(c) for c in captions.get(photo, [])), verdict == "confirmed"
            )
    groups = len({r[5] for r in rows if r[5] is not None})
    lat = store.latencies()
    new_rules = {x["name"] for x in cfg["campaign"]["rules"]} - {x["name"] for x in cfg["rules"]["rules"]}
    res = {
        "devices": len(videos),
        "events_kept": len(kept),
        "events_received": len(set(stored)),
        "events_lost": len(kept - set(stored)),
        "events_duplicated": (len(stored) - len(set(stored))) + len(set(stored) - kept),
        "faults_injected": sum(proxy.faults.values()) + 1,
        "faults": {
            **proxy.faults,
            "collector_killed": 1,
            "collector_down_seconds": round(down, 1),
            "connections_refused_while_down": proxy.upstream_refused,
        },  # fmt: skip
        "campaign": {
            "version": version,
            "devices_switched": sum(1 for s in summaries if s.get("rules_version") == str(version)),
            "events_under_campaign": sum(1 for r in rows if r[2] in new_rules),
        },
        "p95_seconds_to_searchable": float(np.percentile(lat, 95)) if lat else None,
        "p50_seconds_to_searchable": float(np.percentile(lat, 50)) if lat else None,
        **tally.fleet_figures(),
        "dedup_ratio": 1.0 - groups / len(stored) if stored else None,
        "groups": groups,
        "distinct_photos_stored": len({truth_of[k][2] for k in stored if k in truth_of}),
        "device_side": {
            "dropped_as_near_duplicates": sum(s.get("dropped_as_near_duplicates", 0) for s in summaries),
            "kept_frames": sum(s.get("kept_frames", 0) for s in summaries),
            "upload": [s.get("upload") for s in summaries],
        },
        "collector_stats": st,
        "devices_wall_seconds": round(t_devices, 1),
        "store": store.name,
    }
    res["novelty"] = novelty_study(cfg, videos[0], out / "novelty")
    res["cascade"] = cascade_study(cfg, captions, out / "cascade")
    res["ingest"] = ingest_study(cfg, out / "ingest", cfg["teacher"], dim, teacher_id)
    res["ingest_events_per_s"] = res["ingest"]["sqlite_1"]["events_per_s"]
    return res


class _Tally:
    """Per rule: frames the student kept, how many its photo's captions bear out, how many the teacher
    confirmed, and how many of those the captions bear out (the cascade's precision against the truth)."""

    KEYS = ("kept", "relevant", "confirmed", "confirmed_relevant")

    def __init__(self) -> None:
        self.per_rule: dict[str, dict[str, int]] = {}

    def add(self, rule: str, hit: bool, confirmed: bool) -> None:
        pr = self.per_rule.setdefault(rule, dict.fromkeys(self.KEYS, 0))
        pr["kept"] += 1
        pr["relevant"] += hit
        pr["confirmed"] += confirmed
        pr["confirmed_relevant"] += hit and confirmed

    def totals(self) -> dict[str, int]:
        return {k: sum(v[k] for v in self.per_rule.values()) for k in self.KEYS}

    def precisions(self) -> tuple[float | None, float | None]:
        t = self.totals()
        return (
            t["relevant"] / t["kept"] if t["kept"] else None,
            t["confirmed_relevant"] / t["confirmed"] if t["confirmed"] else None,
        )

    def fleet_figures(self) -> dict[str, Any]:
        sp, cp = self.precisions()
        t = self.totals()
        return {
            "student_precision": sp,
            "cascade_precision": cp,
            "teacher_rescoring_precision_gain": cp - sp if None not in (sp, cp) else None,
            "cascade_keeps": t["confirmed"] / t["kept"] if t["kept"] else None,
            "per_rule": self.per_rule,
        }


def _fresh_store(store_dir: Path, dim: int, teacher_id: str, n_devices: int):
    """A new collection (a rerun starts over: the run is one measurement) with a token file per car."""
    import secrets
    import shutil

    from edgeclip.collect.store import open_store

    if store_dir.exists():
        shutil.rmtree(store_dir)
    store = open_store(store_dir, dim, teacher_id)
    tokens = {}
    for d in range(n_devices):
        tokens[d] = store_dir.parent / "tokens" / f"car-{d}"
        tokens[d].parent.mkdir(parents=True, exist_ok=True)
        tok = secrets.token_urlsafe(16)
        store.add_device(f"car-{d}", tok)
        tokens[d].write_text(tok + "\n")
    return store, tokens


def _start_devices(cfg: dict, out: Path, videos: list[dict], tokens: dict, port: int) -> list:
    """One real-time `edgeclip watch --upload` process per car, each on its own video, through the proxy."""
    import shutil

    from edgeclip.core.io import write_json

    rules_path = out / "rules.json"
    write_json(rules_path, cfg["rules"])
    devices = []
    for d, v in enumerate(videos):
        wdir = out / "devices" / f"car-{d}"
        if wdir.exists():
            shutil.rmtree(wdir)
        cmd = edgeclip_cmd() + [
            "watch", v["path"], "--bundle", cfg["bundle"], "--rules", str(rules_path), "--out", str(wdir),
            "--no-progress", "--threads", "1", "--upload", f"http://127.0.0.1:{port}",
            "--device-id", f"car-{d}", "--token-file", str(tokens[d]), "--campaign-poll", "1",
            "--drain-seconds", str(cfg.get("drain_seconds", 300)), "--json", "--realtime",
        ]  # fmt: skip
        log = open(out / f"car-{d}.log", "wb")
        devices.append(subprocess.Popen(cmd, env=child_env(1), stdout=subprocess.PIPE, stderr=log))
    return devices


def _outage_and_campaign(cfg: dict, out: Path, store, collector: CollectorProcess):
    """The collector is SIGKILLed mid-run and restarted on its old port; then a campaign is pushed.
    -> (the new collector, seconds it was down, the campaign's version)."""
    from edgeclip.collect.campaign import push
    from edgeclip.core.io import write_json

    time.sleep(float(cfg.get("kill_after", 20)))
    collector.kill()
    t_down = time.time()
    time.sleep(float(cfg.get("down_seconds", 5)))
    collector = CollectorProcess(
        str(out / "store"), cfg["teacher"], None, out / "collector.log", port=collector.port
    ).start()
    down = time.time() - t_down
    write_json(out / "campaign.json", cfg["campaign"])
    return collector, down, push(store, out / "campaign.json")


def _device_summaries(cfg: dict, devices: list) -> list[dict]:
    """Each car's closing JSON line (its summary, with the upload counters)."""
    summaries = []
    for p in devices:
        stdout, _ = p.communicate(timeout=float(cfg.get("device_timeout", 1500)))
        lines = [x for x in stdout.decode().splitlines() if x.startswith("{")]
        summaries.append(json.loads(lines[-1]) if lines else {"error": f"exit {p.returncode}"})
    return summaries


def _rescored(cfg: dict, collector: CollectorProcess) -> dict:
    """Wait until the teacher has looked at every stored event; -> the collector's stats."""
    end = time.monotonic() + float(cfg.get("rescore_timeout", 900))
    while time.monotonic() < end:
        st = collector.stats()
        if st["rescored"] + st["verdicts"].get("unreadable", 0) >= st["events"]:
            break
        time.sleep(1.0)
    return collector.stats()


def _kept_keys(out: Path, videos: list[dict]) -> tuple[set[str], dict[str, tuple]]:
    """The idempotency key of every frame each car kept (from its event log and run id), and its truth: (car,
    rule, the photo on screen)."""
    from edgeclip.runtime.watch.events import event_key

    kept, truth_of = set(), {}
    for d, v in enumerate(videos):
        wdir = out / "devices" / f"car-{d}"
        run = json.loads((wdir / "state.json").read_text())["run"]
        for line in (wdir / "events.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["type"] == "frame":
                k = event_key(run, r["rule"], r["event"], r["t"])
                kept.add(k)
                truth_of[k] = (d, r["rule"], _photo_at(v, r["t"]))
    return kept, truth_of


def _teacher_facts(bundle: str) -> tuple[int, str]:
    from edgeclip.runtime.bundle import read_manifest

    t = read_manifest(bundle).get("teacher") or {}
    return int(t["embed_dim"]), str(t["id"])


# ------------------------------------------------------------------------------------------ novelty
def novelty_study(cfg: dict, video: dict, out: Path) -> dict[str, Any]:
    """One car's video with its rules, novelty off and on: frames kept, near-duplicates dropped, and how many
    distinct photos (scenes) each kept."""
    from edgeclip.runtime import load_bundle
    from edgeclip.runtime.watch import load_rules, watch

    lab = load_bundle(cfg["bundle"], threads=int(cfg.get("threads", 2)))
    res = {}
    for name, nov in (("off", 0.0), ("on", None)):
        rules = json.loads(json.dumps(cfg["rules"]))
        for r in rules["rules"]:
            if nov is not None:
                r["novelty"] = nov
        s = watch(video["path"], lab, load_rules(rules), out / name, progress=False, log=lambda s: None)
        scenes = set()
        for line in (out / name / "events.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["type"] == "frame":
                scenes.add((r["rule"], _photo_at(video, r["t"])))
        res[name] = {
            "kept_frames": s["kept_frames"],
            "dropped_as_near_duplicates": s["dropped_as_near_duplicates"],
            "distinct_scenes_kept": len(scenes),
        }
    return res


# ------------------------------------------------------------------------------------------ the cascade
def cascade_study(cfg: dict, captions: dict[str, list[str]], out: Path) -> dict[str, Any]:
    """The teacher's second opinion on a larger sample than the fleet run keeps: one car's video of
    ``cascade_photos`` test photos (each shown once), every rule of the fleet and the campaign, no caps or novelty;
    each kept frame scored by the student (on the device) and by the teacher (as the collector does), both against
    the photo's captions. -> per rule and overall: frames kept, precision of the student, precision of what the
    teacher confirmed, and the share of the student's true hits the teacher rejected."""
    from PIL import Image

    from edgeclip.collect.teacher import TeacherSide
    from edgeclip.lab.video import make_slideshow
    from edgeclip.runtime import load_bundle
    from edgeclip.runtime.watch import load_rules, watch

    rng = random.Random(int(cfg.get("seed", 0)) + 1)
    photos = rng.sample(sorted(captions), int(cfg.get("cascade_photos", 150)))
    out.mkdir(parents=True, exist_ok=True)
    video = make_slideshow(
        [(p, 1.0, Path(p).stem) for p in photos], out / "cascade.mp4", size=(320, 240), fps=4
    )
    names = {}
    rules = json.loads(json.dumps(cfg["rules"]))
    for r in cfg["rules"]["rules"] + cfg["campaign"]["rules"]:
        names.setdefault(r["name"], {**r, "max_frames": 1000, "novelty": 0.0})
    rules["rules"] = list(names.values())
    rules["sample"] = {"every": 1}
    lab = load_bundle(cfg["bundle"], threads=int(cfg.get("threads", 2)))
    watch(video["path"], lab, load_rules(rules), out / "watch", progress=False, log=lambda s: None)
    teacher = TeacherSide(cfg["teacher"])
    words = {r["name"]: _word_re(r["words"]) for r in cfg["truth"]}
    rows = [json.loads(x) for x in (out / "watch" / "events.jsonl").read_text().splitlines()]
    frames = [r for r in rows if r["type"] == "frame" and r["rule"] in words]
    emb = (
        teacher.images([Image.open(out / "watch" / r["file"]).convert("RGB") for r in frames])
        if frames
        else []
    )
    tally = _Tally()
    for r, e in zip(frames, emb):
        rule = names[r["rule"]]
        meta = {
            "query": rule["query"],
            "background": rules.get("background", []),
            "threshold": rule["threshold"],
        }
        _, verdict = teacher.verdict(e, meta)
        photo = _photo_at(video, r["t"])
        tally.add(
            r["rule"],
            any(words[r["rule"]].search(c) for c in captions.get(photo, [])),
            verdict == "confirmed",
        )
    tot, per_rule = tally.totals(), tally.per_rule
    sp, cp = tally.precisions()
    return {
        "photos": len(photos),
        "frames": video["frames"],
        **tot,
        "student_precision": sp,
        "cascade_precision": cp,
        "precision_gain": cp - sp if None not in (sp, cp) else None,
        "true_hits_rejected": 1 - tot["confirmed_relevant"] / tot["relevant"] if tot["relevant"] else None,
        "per_rule": per_rule,
        "thresholds": "the rules' 0.5, not tuned",
    }


# ------------------------------------------------------------------------------------------ ingest
def _events_for_load(n: int, dim: int, photos: list[Path]) -> list[tuple[dict, bytes]]:
    rng = np.random.default_rng(0)
    jpegs = [p.read_bytes() for p in photos]
    out = []
    for i in range(n):
        e = rng.normal(size=dim).astype(np.float32)
        e /= np.linalg.norm(e)
        meta = {"key": f"load-{i:08d}-{rng.integers(1 << 30):x}", "rule": "load", "query": "a dog",
                "background": ["a photo"], "threshold": 0.5, "kept_at": time.time(),
                "embedding": [round(float(x), 6) for x in e]}  # fmt: skip
        out.append((meta, jpegs[i % len(jpegs)]))
    return out


def _post_all(urls: list[str], token: str, events: list, clients: int) -> float:
    """Post ``events`` from ``clients`` threads spread over ``urls``; -> events/s."""
    import httpx

    chunks = [events[i::clients] for i in range(clients)]
    errors = []

    def worker(i: int):
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
            for meta, jpeg in chunks[i]:
                r = c.post(
                    f"{urls[i % len(urls)]}/api/events",
                    headers={"Idempotency-Key": meta["key"]},
                    data={"meta": json.dumps({**meta, "device": "loadgen"})},
                    files={"file": ("f.jpg", jpeg, "image/jpeg")},
                )
                if r.status_code != 201:
                    errors.append(r.text[:200])

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise EdgeClipError(f"ingest load: {len(errors)} failed posts, first: {errors[0]}")
    return len(events) / dt


def ingest_study(cfg: dict, out: Path, teacher: str, dim: int, teacher_id: str) -> dict[str, Any]:
    """Events/s into one collector process (SQLite), one and two processes on one PostgreSQL; rescoring off,
    so the figure is the ingest path (HTTP, checks, JPEG decode check, blob, row)."""
    import secrets
    import shutil

    from edgeclip.collect.pglocal import LocalPostgres, unavailable
    from edgeclip.collect.store import open_store

    n, clients = int(cfg.get("ingest_events", 400)), int(cfg.get("ingest_clients", 8))
    from edgeclip.data.captions import load_captions

    cs = load_captions(cfg["captions"], cfg.get("images"), cfg.get("split", "test"))
    photos = [Path(it.record().path) for it in cs.items[:32]]
    res: dict[str, Any] = {"events": n, "clients": clients, "rescoring": "off (the teacher pass is separate)"}

    def run(name: str, spec: str, blobs: str, procs: int) -> None:
        tok = secrets.token_urlsafe(16)
        st = open_store(spec, dim, teacher_id)
        st.add_device("loadgen", tok)
        cs_ = [
            CollectorProcess(spec, teacher, blobs, out / f"{name}.log", rescore=False).start()
            for _ in range(procs)
        ]
        try:
            rate = _post_all([f"http://127.0.0.1:{c.port}" for c in cs_], tok, _events_for_load(n, dim, photos),
                             clients)  # fmt: skip
        finally:
            for c in cs_:
                c.stop()
        res[name] = {"events_per_s": round(rate, 1), "collectors": procs, "store": st.name}
        st.close()

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    run("sqlite_1", str(out / "sqlite"), str(out / "sqlite" / "blobs"), 1)
    why = unavailable()
    if why:
        res["postgresql"] = f"not measured: {why}"
        return res
    with LocalPostgres(out / "pg") as url:
        run("postgresql_1", url, str(out / "pg-blobs"), 1)
    with LocalPostgres(out / "pg2") as url:
        run("postgresql_2", url, str(out / "pg2-blobs"), 2)
    res["postgresql_2_vs_1"] = round(
        res["postgresql_2"]["events_per_s"] / res["postgresql_1"]["events_per_s"], 2
    )
    return res
