"""The server's tick journal (serve/engine/ticklog.py) under damage and storage faults: a damaged segment is
read around and named, never silently cut short; a damaged or foreign file at start is quarantined with a
warning and the server serves; a storage error while serving fails closed (503 with the reason, no state
moved, nothing of the batch kept) and the server recovers by itself; an ingest of a served source while the
server holds unflushed ticks leaves each (source, timestamp) stored once."""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from nq_dagster.fusion.predictor import Predictor
from nq_dagster.fusion.record import jsonable
from nq_dagster.serve.engine.ticklog import TickLog, read_segment
from nq_dagster.serve.keys import KeyStore
from nq_dagster.store import Warehouse

from .serving import ProcessServer, ThreadServer, build_trained_home, copy_home, served_rows, tick

REALTIME = "/api/v1/process/realtime"


def _rows(n: int, pad: int = 250) -> list[tuple]:
    """n journal rows of source "m" whose records carry a findable marker."""
    return [
        ("m", i, float(i), False, json.dumps({"marker": f"row-{i:05d}", "pad": "x" * pad})) for i in range(n)
    ]


def _segment(tmp_path: Path, rows: list[tuple], batch: int = 7) -> Path:
    """A closed segment holding `rows`, written as the worker writes (one transaction per batch)."""
    log = TickLog(tmp_path / "wal")
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        log.append(part, {r[0] for r in part})
    path, conn = log.close_segment()
    conn.close()  # the flusher's close: the WAL checkpointed into the database file
    return path


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_an_altered_row_is_named_and_the_rows_after_it_are_read(tmp_path):
    path = _segment(tmp_path, _rows(300))
    raw = path.read_bytes()
    _patch(path, raw.index(b"row-00150"), b"row-0O150")  # one character of one record
    got = read_segment(path)
    assert [t.ts_ns for t in got.ticks] == [i for i in range(300) if i != 150]
    assert got.lost == ["row 151: checksum mismatch (source 'm', ts_ns 150)"]  # (seq counts from 1)
    assert got.damaged and got.error is None


def test_a_zeroed_page_loses_only_its_rows(tmp_path):
    path = _segment(tmp_path, _rows(300))
    raw = path.read_bytes()
    page = raw.index(b"row-00150") // 4096
    _patch(path, page * 4096, b"\0" * 4096)
    got = read_segment(path)
    seen = [t.ts_ns for t in got.ticks]
    assert 150 not in seen and seen[0] == 0 and seen[-1] == 299, "rows after the damage are read"
    lost = sorted(set(range(300)) - set(seen))
    assert lost == list(range(lost[0], lost[-1] + 1)) and len(lost) <= 4096 // 250 + 1, "more than the page"
    assert got.lost[0].startswith("quick_check: ")
    assert got.lost[1].startswith(f"rows {lost[0] + 1}..{lost[-1] + 1}: ")  # (seq counts from 1)


def test_files_that_are_not_journals_are_named(tmp_path):
    (tmp_path / "zeroed.sqlite3").write_bytes(b"\0" * 8192)
    got = read_segment(tmp_path / "zeroed.sqlite3")
    assert not got.ticks and "not a database" in got.error
    # the former line format: a bad line in the middle costs that line only
    good = json.dumps({"s": "m", "t": 1, "v": 1.0, "stored": False, "r": {"x": 1}})
    later = json.dumps({"s": "m", "t": 5, "v": 5.0, "stored": False, "r": {"x": 5}})
    lines = [good.encode(), b"{oops", b'{"s": "m", "t": 3, "v": 3.0, "stored": false, "r": "\xff\xfe"}']
    lines += [
        b'{"s": "m"}',
        later.encode(),
        b'{"s": "m", "t": 6, "v"',
    ]  # the last one torn: never acknowledged
    (tmp_path / "old.jsonl").write_bytes(b"\n".join(lines))
    got = read_segment(tmp_path / "old.jsonl")
    assert [t.ts_ns for t in got.ticks] == [1, 5]
    assert [line.split(":")[0] for line in got.lost] == ["line 2", "line 3", "line 4"]


# the server -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_trained_home(tmp_path_factory.mktemp("journal"))


@pytest.fixture
def home(base, tmp_path):
    return copy_home(base[0], tmp_path / "nq")


@pytest.fixture
def ticks(base):
    return base[1]


def _key(home: Path, role: str = "developer") -> dict:
    key = KeyStore(home).create(role, rate="60000/min", burst=1000)[0]
    return {"Authorization": f"Bearer {key}"}


def _records(home: Path, ticks: pd.DataFrame, n: int) -> list[dict]:
    """The records the worker would journal for the first n ticks of `m` (the one prediction path)."""
    p = Predictor()
    p.load(Warehouse(home).load_artifact("serving_state", "m"))
    recs = p.advance("m", ticks.value[:n].to_numpy(), ticks.timestamp[:n].to_numpy())
    for r, v in zip(recs, ticks.value[:n], strict=True):
        r["value"] = float(v)
    return [jsonable(r) for r in recs]


def test_damaged_journal_files_at_start_are_quarantined_named_and_the_server_serves(
    home, ticks, tmp_path, caplog
):
    """What a dead server left: a good segment, one with an altered row, a zeroed file and a line segment with
    invalid UTF-8. The start stores every tick it can read, moves the three damaged files aside with a reason,
    warns naming each, and the server answers."""
    wal = home / "serve" / "wal" / "r0"
    recs = _records(home, ticks, 20)
    stamps = [int(pd.Timestamp(t).value) for t in ticks.timestamp[:20]]
    rows = [
        ("m", t, float(v), False, json.dumps(r))
        for t, v, r in zip(stamps, ticks.value[:20], recs, strict=True)
    ]
    wal.mkdir(parents=True)
    for name, part in (("00000000000000001-000001", rows[:10]), ("00000000000000002-000001", rows[10:])):
        _segment(tmp_path / name, part, batch=3).rename(wal / f"{name}.sqlite3")
    damaged = wal / "00000000000000002-000001.sqlite3"
    marker = json.dumps(recs[15]["prediction_id"]).encode()
    at = damaged.read_bytes().index(marker)
    _patch(damaged, at + 2, b"Z")  # one character of tick 15's record
    (wal / "00000000000000003-000001.sqlite3").write_bytes(b"\0" * 4096)
    (wal / "00000000000000004-000001.jsonl").write_bytes(b'{"s": "m", "t": \xff\xfe}\n')
    with caplog.at_level("WARNING", logger="nq.serve"):
        srv = ThreadServer(home)
    try:
        warned = "\n".join(m.getMessage() for m in caplog.records)
        for name in ("00000000000000002-000001", "00000000000000003-000001", "00000000000000004-000001"):
            assert name in warned, f"no warning names {name}"
        assert "checksum mismatch" in warned and "not a database" in warned
        quarantine = wal / "quarantine"
        assert sorted(p.name for p in quarantine.glob("*.reason.txt")) == [
            "00000000000000002-000001.sqlite3.reason.txt",
            "00000000000000003-000001.sqlite3.reason.txt",
            "00000000000000004-000001.jsonl.reason.txt",
        ]
        assert "stored 9 tick(s)" in (quarantine / "00000000000000002-000001.sqlite3.reason.txt").read_text()
        assert not list(wal.glob("*.sqlite3")) and not list(wal.glob("*.jsonl"))
        r = httpx.post(
            srv.url + REALTIME, json=tick("m", ticks.timestamp[20], ticks.value[20]), headers=_key(home)
        )
        assert r.status_code == 200, r.text
    finally:
        srv.stop()
    wh = Warehouse(home)
    stored = set(pd.to_datetime(served_rows(wh, "raw_ticks", "m")["timestamp"], utc=True))
    assert stored == set(ticks.timestamp[:21]) - {ticks.timestamp[15]}


def _post_all(url, headers, source, stamps_values, out, stop, errors):
    """One client: its source's ticks in order; a 503 is retried (the tick was not acknowledged). Every answer
    must be its own: strict JSON naming this source and this timestamp."""
    c = httpx.Client(base_url=url, headers=headers, timeout=30)
    i = 0
    while i < len(stamps_values) and not stop.is_set():
        ts, v = stamps_values[i]
        r = c.post(REALTIME, json=tick(source, ts, v))
        body = json.loads(r.text, parse_constant=lambda c: errors.append(f"non-JSON constant {c}"))
        if r.status_code == 200:
            if body["source"] != source or pd.Timestamp(body["timestamp"]) != ts:
                errors.append(f"{source}: got another exchange's answer: {r.text[:200]}")
            out["acked"].append(ts)
            out["records"].append(body)
            i += 1
        elif r.status_code == 503:
            out["refused"].append((ts, body["error"]["message"]))
            time.sleep(0.05)
        else:
            errors.append(f"{source}: {r.status_code} {r.text[:200]}")
            return


def _can_bypass_permissions(tmp: Path) -> bool:
    d = tmp / "ro-check"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "x").write_bytes(b"x")
        return True
    except PermissionError:
        return False
    finally:
        d.chmod(0o755)


@pytest.mark.parametrize("fault", ["file_size_limit", "read_only_directory"])
def test_storage_errors_fail_closed_move_nothing_and_recover_without_a_restart(home, ticks, tmp_path, fault):
    """A live server loses the right to write. `file_size_limit`: RLIMIT_FSIZE 0 on the server process (every
    write that grows a file fails with EFBIG, also as root); `read_only_directory`: the journal's directory
    made read-only (needs a process without CAP_DAC_OVERRIDE: skipped as root). During the fault: 503 naming
    the directory and the reason, status down; no answer of another client's exchange. After: answers again
    without a restart; the refused ticks moved nothing (the same ticks are predicted as the one prediction
    path predicts them); after kill -9 and a restart every acknowledged tick is stored exactly once."""
    if fault == "read_only_directory" and _can_bypass_permissions(tmp_path):
        pytest.skip(
            "this process writes into read-only directories (root / CAP_DAC_OVERRIDE): the chmod fault "
            "cannot happen here; the file_size_limit case covers the same path"
        )
    wh = Warehouse(home)
    for s in ("s3", "s4", "s5"):  # three sources are enough here; each loaded costs seconds at every start
        wh.artifact_path("serving_state", s).unlink()
    dev, viewer = _key(home), _key(home, "viewer")
    extra = ["--flush-interval", "0.5"]
    server = ProcessServer(home, extra=extra)
    wal = home / "serve" / "wal" / "r0"
    pairs = list(zip(ticks.timestamp[:60], ticks.value[:60], strict=True))
    out = {"acked": [], "records": [], "refused": []}
    stop, errors = threading.Event(), []
    try:
        for ts, v in pairs[:10]:  # acknowledged before the fault
            r = httpx.post(server.url + REALTIME, json=tick("m", ts, v), headers=dev)
            assert r.status_code == 200, r.text
            out["acked"].append(ts)
            out["records"].append(r.json())
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        if fault == "file_size_limit":
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (0, hard))
        else:
            wal.chmod(0o555)
        # the fault holds until the server has refused ticks; two other clients post meanwhile
        others = {s: {"acked": [], "records": [], "refused": []} for s in ("s1", "s2")}
        threads = [
            threading.Thread(
                target=_post_all,
                args=(server.url, dev, s, pairs[:40], others[s], stop, errors),
                daemon=True,
            )
            for s in others
        ]
        for t in threads:
            t.start()
        deadline, i = time.monotonic() + 30, 10
        while time.monotonic() < deadline:
            ts, v = pairs[i]
            r = httpx.post(server.url + REALTIME, json=tick("m", ts, v), headers=dev)
            if r.status_code == 503:
                out["refused"].append((ts, r.json()["error"]["message"]))
                if len(out["refused"]) >= 3:
                    break
            else:
                assert r.status_code == 200, r.text
                out["acked"].append(ts)
                out["records"].append(r.json())
                i += 1
            time.sleep(0.05)
        assert len(out["refused"]) >= 3, "the fault never refused a tick"
        message = out["refused"][-1][1]
        reason = os.strerror(27) if fault == "file_size_limit" else os.strerror(13)  # EFBIG, EACCES
        assert message.startswith(f"data directory not writable: {wal}") and reason in message, message
        doc = httpx.get(server.url + "/api/v1/status", headers=viewer).json()
        assert doc["components"]["storage"]["status"] == "down", doc["components"]["storage"]
        assert doc["status"] == "down"
        scrape = httpx.get(server.url + "/metrics", headers=viewer).text
        assert "nq_storage_up 0.0" in scrape, scrape[-2000:]
        assert "nq_journal_refused_batches 0.0" not in scrape, scrape[-2000:]
        # writing works again: the server answers without a restart, from the tick it refused on
        if fault == "file_size_limit":
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        else:
            wal.chmod(0o755)
        for ts, v in pairs[i:50]:
            r = httpx.post(server.url + REALTIME, json=tick("m", ts, v), headers=dev)
            assert r.status_code == 200, r.text
            assert not r.json()["duplicate"]
            out["acked"].append(ts)
            out["records"].append(r.json())
        for t in threads:
            t.join(60)
        assert not errors, errors[:5]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            storage = httpx.get(server.url + "/api/v1/status", headers=viewer).json()["components"]["storage"]
            if storage["status"] == "healthy":
                break
            time.sleep(0.2)
        assert storage["status"] == "healthy", storage
        assert storage["journal"]["refused_batches"] >= 3
    finally:
        stop.set()
        wal.chmod(0o755)
        server.stop(signal.SIGKILL)
    # the refused ticks moved nothing: the served records are the one prediction path's over the acked ticks
    p = Predictor()
    p.load(Warehouse(home).load_artifact("serving_state", "m"))
    want = p.advance("m", ticks.value[:50].to_numpy(), ticks.timestamp[:50].to_numpy())
    assert out["acked"] == list(ticks.timestamp[:50])
    assert [g["direction"] for g in out["records"]] == [w["direction"] for w in want]
    assert np.allclose([g["confidence"] for g in out["records"]], [w["confidence"] for w in want], atol=1e-9)
    # kill -9, a restart: every acknowledged tick stored exactly once
    server = ProcessServer(home, extra=extra)
    server.stop(signal.SIGTERM)
    for s, acked in (("m", out["acked"]), ("s1", others["s1"]["acked"]), ("s2", others["s2"]["acked"])):
        for table in ("raw_ticks", "predictions"):
            stamps = pd.to_datetime(served_rows(wh, table, s)["timestamp"], utc=True)
            assert stamps.is_unique, f"{s} {table}: a tick stored twice"
            assert set(stamps) == set(acked), f"{s} {table}: stored != acknowledged"


def test_an_ingest_while_the_server_holds_unflushed_ticks_stores_each_timestamp_once(home, ticks, caplog):
    """Ticks 0-9 served and still in the journal (a long flush interval); an ingest of ticks 5-14 of the same
    source with other values meanwhile stores its rows. The flush then keeps the stored rows for 5-9 and
    reports each conflict: each (source, timestamp) once, with one value."""
    from nq_dagster.ingest import Ingestor

    srv = ThreadServer(home, flush_interval_s=3600.0)
    try:
        dev = _key(home)
        for i in range(10):
            r = httpx.post(
                srv.url + REALTIME, json=tick("m", ticks.timestamp[i], ticks.value[i]), headers=dev
            )
            assert r.status_code == 200, r.text
        assert not served_rows(Warehouse(home), "raw_ticks", "m").shape[0], "flushed too early"
        landed = ticks.iloc[5:15].assign(value=ticks.value[5:15] + 100.0)
        csv = home.parent / "late.csv"
        landed.assign(timestamp=landed.timestamp.map(pd.Timestamp.isoformat)).to_csv(csv, index=False)
        res = Ingestor(Warehouse(home)).ingest_file(csv, source="m")
        assert res.status == "ingested", res
        with caplog.at_level("WARNING", logger="nq.serve"):
            srv.server.engine.call(srv.server.engine._rotate).result(30)
            deadline = time.monotonic() + 30
            while srv.server.engine.flushed_segments < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert srv.server.engine.flusher.conflicts == 5
    finally:
        srv.stop()
    raw = Warehouse(home).read_table("raw_ticks", "m")
    late = raw[pd.to_datetime(raw["timestamp"], utc=True) > ticks.timestamp[0] - pd.Timedelta(1, "ns")]
    stamps = pd.to_datetime(late["timestamp"], utc=True)
    assert stamps.is_unique and set(stamps) == set(ticks.timestamp[:15])
    by_ts = dict(zip(stamps, late["value"], strict=True))
    assert all(by_ts[ticks.timestamp[i]] == ticks.value[i] for i in range(5))  # served, then flushed
    assert all(by_ts[ticks.timestamp[i]] == ticks.value[i] + 100.0 for i in range(5, 15))  # the ingest's
    conflicts = [json.loads(m.getMessage()) for m in caplog.records if "tick_conflict" in m.getMessage()]
    assert len(conflicts) == 5
    c = conflicts[0]
    assert c["source"] == "m" and c["stored_value"] == c["served_value"] + 100.0
    assert pd.Timestamp(c["timestamp"]) == ticks.timestamp[5]


def test_a_refused_batch_moves_no_prediction_process(base, ticks):
    """`undo_last` after an advance puts every source back, in this process and in a prediction process
    (the worker's decision travels with its next message): advancing again gives the one path's records."""
    from nq_dagster.fusion.shards import ShardedPredictor

    wh = Warehouse(base[0])
    states = {s: wh.load_artifact("serving_state", s) for s in ("m", "s1")}
    want = {}
    for s, st in states.items():  # (each name its own encoder seed: its own records)
        ref = Predictor()
        ref.load(st)
        want[s] = ref.advance(s, ticks.value[:2].to_numpy(), ticks.timestamp[:2].to_numpy())
    with ShardedPredictor(2) as sp:
        for st in states.values():
            sp.load(st)
        assert {sp.shard_of("m"), sp.shard_of("s1")} == {0, 1}
        step = {s: (ticks.value[:1].to_numpy(), ticks.timestamp[:1].to_numpy()) for s in states}
        sp.advance_many({s: (v * 1.001, t) for s, (v, t) in step.items()})  # a batch the journal refuses
        sp.undo_last()
        assert sp.last_ts("m") == states["m"].stream.last_ts
        got = sp.advance_many(
            {s: (ticks.value[:2].to_numpy(), ticks.timestamp[:2].to_numpy()) for s in states}
        )
    for s in states:
        assert [g["confidence"] for g in got[s]] == pytest.approx(
            [w["confidence"] for w in want[s]], abs=1e-9
        )
        assert [g["direction"] for g in got[s]] == [w["direction"] for w in want[s]]
