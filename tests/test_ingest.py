import os
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from nq_dagster.ingest import Ingestor
from nq_dagster.store import atomic_write_parquet

GOOD = "timestamp,value\n2026-01-01T00:00:00Z,1.5\n2026-01-01T00:01:00Z,2.5\n2026-01-01T00:02:00Z,3.0\n"


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_good_csv_and_reingest_is_noop(wh, tmp_path):
    ing = Ingestor(wh)
    r = ing.ingest_file(write(tmp_path, "alpha.csv", GOOD))
    assert r.status == "ingested" and r.sources == {"alpha": 3}
    again = ing.ingest_file(tmp_path / "alpha.csv")
    assert again.status == "skipped-duplicate-file"
    assert len(wh.read_table("raw_ticks", "alpha")) == 3


@pytest.mark.parametrize(
    "text,row,needle",
    [
        ("timestamp,value\n2026-01-01T00:00:00Z,1\nnot-a-time,2\n", 3, "unparseable timestamp"),
        ("timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,abc\n", 3, "not a number"),
        ("timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,inf\n", 3, "NaN or infinite"),
        ("timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,nan\n", 3, "NaN or infinite"),
        (
            "timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:00:00Z,2\n",
            3,
            "duplicate (source, timestamp) of row 2",
        ),
        ("timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,\n", 3, "missing value"),
    ],
)
def test_bad_row_quarantines_whole_file_with_reason(wh, tmp_path, text, row, needle):
    ok = Ingestor(wh).ingest_file(write(tmp_path, "other.csv", GOOD))
    assert ok.status == "ingested"
    p = write(tmp_path, "beta.csv", text)
    r = Ingestor(wh).ingest_file(p)
    assert r.status == "quarantined"
    assert f"row {row}" in r.reason and needle in r.reason and "Fix:" in r.reason
    reason = (wh.quarantine / "beta.csv.reason.txt").read_text()
    assert str(p) in reason and needle in reason
    assert (wh.quarantine / "beta.csv").exists()
    assert wh.table_parts("raw_ticks", "beta") == []  # nothing half-ingested
    assert len(wh.read_table("raw_ticks", "other")) == 3  # other data untouched


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "empty"),
        (b"timestamp,value\n", "no data rows"),
        (b"when,value\n2026-01-01,1\n", "missing timestamp column"),
        (b"timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,\xff\xfe\n", "not UTF-8"),
    ],
)
def test_whole_file_problems(wh, tmp_path, content, needle):
    r = Ingestor(wh).ingest_file(write(tmp_path, "gamma.csv", content))
    assert r.status == "quarantined" and needle in r.reason


def test_skip_bad_rows_keeps_good_rows_and_records_bad(wh, tmp_path):
    text = "timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,x\n2026-01-01T00:02:00Z,3\n"
    r = Ingestor(wh).ingest_file(write(tmp_path, "delta.csv", text), skip_bad_rows=True)
    assert r.status == "ingested-with-bad-rows" and r.sources == {"delta": 2}
    assert "row 3" in (wh.quarantine / "delta.csv.reason.txt").read_text()


def test_out_of_order_sorted_epochs_and_duplicates_against_store(wh, tmp_path):
    text = "timestamp,value\n1767225720,2\n1767225600,1\n"  # epoch seconds, reversed
    r = Ingestor(wh).ingest_file(write(tmp_path, "eps.csv", text))
    assert "sorted" in " ".join(r.notes)
    raw = wh.read_table("raw_ticks", "eps")
    assert list(raw["value"]) == [1.0, 2.0]
    ms = "timestamp,value\n1767225600000,5\n"  # the same instant in milliseconds: a duplicate of a stored row
    r2 = Ingestor(wh).ingest_file(write(tmp_path, "eps2.csv", ms), source="eps")
    assert r2.status == "quarantined" and "already stored" in r2.reason


def test_jsonl_parquet_source_column(wh, tmp_path):
    jl = (
        '{"timestamp": "2026-01-01T00:00:00Z", "source": "s1", "v": 1}\n'
        '{"timestamp": "2026-01-01T00:00:00Z", "source": "s2", "v": 2}\n'
    )
    r = Ingestor(wh).ingest_file(write(tmp_path, "multi.jsonl", jl))
    assert r.sources == {"s1": 1, "s2": 1}
    df = pd.DataFrame(
        {"timestamp": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True), "price": [1.0, 2.0]}
    )
    atomic_write_parquet(tmp_path / "pq.parquet", df)
    r = Ingestor(wh).ingest_file(tmp_path / "pq.parquet", source="pqsrc")
    assert r.sources == {"pqsrc": 2}
    bad = '{"timestamp": "2026-01-01T00:00:00Z", "v": 1}\n{oops\n'
    r = Ingestor(wh).ingest_file(write(tmp_path, "bad.jsonl", bad))
    assert r.status == "quarantined" and "row 2" in r.reason


def test_atomic_write_survives_crash(wh, monkeypatch):
    df = pd.DataFrame({"timestamp": pd.to_datetime(["2026-01-01"], utc=True), "value": [1.0]})
    path = Path(wh.write_table("t", "s", df))

    def boom(*a, **k):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        wh.write_table("t", "s", pd.concat([df, df]))
    monkeypatch.undo()
    assert len(wh.read_table("t", "s")) == 1  # the old partition is intact
    assert [p.name for p in path.parent.iterdir()] == ["data.parquet"]  # no temp file left behind


def test_fast_tick_validation_accepts_a_subset_of_ingest_with_the_same_values():
    """The server's shortcut never accepts what the rules refuse, and parses what it accepts to the same
    timestamps and values; anything unusual is left to the rules over a frame of the ticks (None)."""
    from nq_dagster.ingest.ticks import check_tick_frame, fast_validate_ticks

    stamps = [
        "2026-01-05T10:00:00Z",
        "2026-01-05T10:00:00.123456+02:00",
        "2026-01-05 10:00:00",
        "2026-01-05",
        "2026-01-05T10:00",
        "2026-01-05T10:00:00-05:30",
        1767607200,
        1767607200.5,
        1767607200123,
        1767607200123.0,
        0,
        -86400.25,
        "20260105T100000",
        "2026-13-05T10:00:00Z",
        "yesterday",
        "2026-01-05T10:00:00.1234567Z",
        "1767607200",
        float("nan"),
        float("inf"),
        True,
        None,
        "2026-02-30",
        "2026-01-05T25:00:00Z",
        "1969-12-31T23:59:59.5Z",
        "2026-01-05Z",
        10**400,
    ]
    values = [1.5, 0, -3, 1e300, float("nan"), float("inf"), "1.5", True, None, 10**400]
    checked = accepted = 0
    for ts in stamps:
        for v in values:
            for src in ("m", "../evil"):
                fast = fast_validate_ticks([(src, ts, v)])
                full = check_tick_frame([(src, ts, v)])
                checked += 1
                if fast is None:
                    continue
                accepted += 1
                assert not full.problems and len(full.clean) == 1, (ts, v, src)
                tick = full.clean[0]
                assert fast == [(src, tick.ts_ns, tick.value)], (ts, v)
    assert checked == len(stamps) * len(values) * 2 and accepted >= 30
    same_time = [("m", "2026-01-05T10:00:00Z", 1.0), ("m", "2026-01-05T10:00:00+00:00", 2.0)]
    assert fast_validate_ticks(same_time) is None


def test_check_ticks_answers_with_structured_rows():
    """`check_ticks` names each refused tick by its position, kind and column, a repeat by the position of the
    first; the accepted ticks come back with their parsed time and value, whichever path checked them."""
    from nq_dagster.ingest import check_ticks

    plain = check_ticks([("m", "2026-01-05T10:00:00Z", 1.5), ("n", 1767607200, 2)])
    assert not plain.problems
    assert [(t.row, t.source, t.ts_ns, t.value) for t in plain.clean] == [
        (0, "m", 1767607200 * 10**9, 1.5),
        (1, "n", 1767607200 * 10**9, 2.0),
    ]
    r = check_ticks(
        [
            ("m", "2026-01-05T10:00:00Z", 1.5),
            ("m", "yesterday", 1.0),
            ("m", 1767607200, 2.0),
            ("../x", "2026-01-05T10:00:01Z", float("nan")),
        ]
    )
    assert [(t.row, t.ts_ns) for t in r.clean] == [(0, 1767607200 * 10**9)]
    assert [(b.row, b.column, b.kind, b.duplicate_of) for b in r.problems] == [
        (1, "timestamp", "timestamp", None),
        (2, "timestamp", "duplicate", 0),
        (3, "value", "not_finite", None),
        (3, "source", "source", None),
    ]
    assert r.problems[1].describe("request") == (
        "request: row 2, column 'timestamp': duplicate (source, timestamp) of row 0 (value '1767607200'). "
        "Fix: keep one row per source and timestamp"
    )


def test_two_concurrent_overlapping_ingests_store_each_time_once(tmp_path):
    """Two `nq ingest` processes at the same time, files overlapping by half, one source: every (source,
    timestamp) is stored once (the check against stored rows and the write are serialised per source)."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    from nq_dagster.store import Warehouse

    home = tmp_path / "nq"
    n = 150_000
    ts = pd.date_range("2026-01-01", periods=n + n // 2, freq="s", tz="UTC")
    df = pd.DataFrame(
        {"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": np.arange(len(ts), dtype=float)}
    )
    df.iloc[:n].to_csv(tmp_path / "a.csv", index=False)
    df.iloc[n // 2 :].to_csv(tmp_path / "b.csv", index=False)
    env = {**os.environ, "NQ_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    Warehouse(home).ensure()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nq_dagster.cli",
                "--home",
                str(home),
                "ingest",
                str(tmp_path / f),
                "--source",
                "x",
                "--skip-bad-rows",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in ("a.csv", "b.csv")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    wh = Warehouse(home)
    raw = wh.read_table("raw_ticks", "x")
    assert len(raw) == raw["timestamp"].nunique() == len(ts), json.dumps([o[0][-300:] for o in outs])


def test_stale_temporary_files_are_removed(wh):
    """A write killed mid-way leaves `.<name>.<random>.tmp`; the next ingest removes it once it is an hour
    old, and leaves a fresh one (a write in progress) alone."""
    import os
    import time

    from nq_dagster.ingest import Ingestor

    d = wh.tables_dir / "raw_ticks" / "source=a"
    d.mkdir(parents=True)
    old, fresh = d / ".part-x.parquet.abc.tmp", d / ".part-y.parquet.def.tmp"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    Ingestor(wh)
    assert not old.exists() and fresh.exists()


def _minutes(start: str, n: int, base: float = 0.0) -> str:
    ts = pd.date_range(start, periods=n, freq="min", tz="UTC")
    return "timestamp,value\n" + "".join(
        f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},{base + i}\n" for i, t in enumerate(ts)
    )


def test_new_rows_are_read_without_reading_the_history(wh, tmp_path, monkeypatch):
    """Reading the rows after a time, and de-duplicating a file of new rows, open only the parts whose footer
    statistics overlap: the older parts (the history) are never read; the answers equal a full read's."""
    ing = Ingestor(wh)
    old = ing.ingest_file(write(tmp_path, "old.csv", _minutes("2026-01-01", 500)), source="s")
    ing.ingest_file(write(tmp_path, "mid.csv", _minutes("2026-01-02", 50, 1000)), source="s")
    full = wh.read_table("raw_ticks", "s")
    from nq_dagster.store import parts

    read = []
    real = parts.read_part  # every read of a part, through the Warehouse or the table reader
    monkeypatch.setattr(
        parts,
        "read_part",
        lambda store, part, columns=None: (
            (read.append(part.stem) if part.parent.parent.name == "raw_ticks" else None)
            or real(store, part, columns)
        ),
    )
    cut = pd.Timestamp("2026-01-02 00:10", tz="UTC")
    new = wh.read_table("raw_ticks", "s", after=cut)
    pd.testing.assert_frame_equal(
        new.reset_index(drop=True), full[full["timestamp"] > cut].reset_index(drop=True)
    )
    assert len(new) == 39 and len(read) == 1  # the 500-row part was skipped by its footer
    assert wh.stored_rows("raw_ticks", "s") == 550
    # a file of new rows: its duplicate check reads no stored part; one overlapping the mid part reads only it
    read.clear()
    r = ing.ingest_file(write(tmp_path, "new.csv", _minutes("2026-01-03", 5)), source="s")
    assert r.status == "ingested" and read == []
    dup = write(tmp_path, "dup.csv", "timestamp,value\n2026-01-02T00:20:00Z,9\n2026-01-04T00:00:00Z,9\n")
    r = ing.ingest_file(dup, source="s")
    assert r.status == "quarantined" and "already stored" in r.reason
    assert (
        len(read) == 2 and f"part-{old.content_hash[:20]}" not in read
    )  # mid and new parts, not the history


def test_compaction_keeps_every_row_once_and_readers_see_one_table(wh, tmp_path, capsys):
    """`nq compact` merges a source's parts into one: the same rows (count and content checksum) before and
    after; queries running while it happens always see the whole table once (never both the compacted part and
    the parts it replaces, never a half); a replaced part written again by name (a writer re-flushing it)
    stays hidden; the replaced files are removed once their grace time has passed."""
    import threading

    from nq_dagster.cli import main

    ing = Ingestor(wh)
    for k in range(12):
        ing.ingest_file(
            write(tmp_path, f"f{k}.csv", _minutes(f"2026-01-{k + 1:02d}", 40, 100 * k)), source="c"
        )
    parts = wh.table_parts("raw_ticks", "c")
    assert len(parts) == 12
    sql = (
        "SELECT count(*) AS n, sum(value) AS s, count(DISTINCT timestamp) AS d "
        "FROM raw_ticks WHERE source = 'c'"
    )
    before = wh.query(sql).iloc[0].tolist()
    assert before[0] == before[2] == 480

    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(wh.query(sql).iloc[0].tolist())

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert main(["--home", str(wh.home), "compact", "--source", "c"]) == 0
        for k in range(12, 14):  # ingest goes on beside it; a second compaction merges the new parts too
            ing.ingest_file(
                write(tmp_path, f"f{k}.csv", _minutes(f"2026-01-{k + 1:02d}", 40, 100 * k)), source="c"
            )
        wh.compact("raw_ticks", "c")
    finally:
        stop.set()
        t.join()
    assert "c raw_ticks: 12 part(s) -> 1" in capsys.readouterr().out
    assert seen and all(row[0] == row[2] for row in seen)  # never a row twice
    assert {row[0] for row in seen} <= {480, 520, 560}  # the table before, or with whole new files
    after = wh.query(sql).iloc[0].tolist()
    assert after[0] == after[2] == 560
    assert after[1] == pytest.approx(before[1] + sum(100 * k * 40 + 780 for k in (12, 13)))
    assert len(wh.table_parts("raw_ticks", "c")) == 1
    # a replaced part written again under its name (what a re-flush does) stays hidden
    old = parts[0]
    atomic_write_parquet(old, wh.read_part(wh.table_parts("raw_ticks", "c")[0]).slice(0, 40))
    assert wh.query(sql).iloc[0].tolist() == after
    # past the grace time the replaced files go; the table is unchanged
    r = wh.compact("raw_ticks", "c", grace_s=0)
    assert r["removed_files"] >= 13 and len(list(wh.partition_dir("raw_ticks", "c").glob("*.parquet"))) == 1
    assert wh.query(sql).iloc[0].tolist() == after
    assert len(wh.read_table("raw_ticks", "c")) == 560


GOOD_FILES = {
    "iso.csv": (
        "timestamp,value\n2026-01-01T00:00:00Z,1.5\n2026-01-01T00:01:00Z, 2.5\n2026-01-01T00:02:00Z,3e2\n"
    ),
    "space.csv": "time,price,volume\n2026-01-01 00:00:00.00,1,10\n2026-01-01 00:00:01.25,2,11\n",
    "secs.csv": "ts,value\n1767225600,1\n1767225601,2\n",
    "millis.csv": "ts,value\n1767225600000,1\n1767225601500,2\n",
    "zones.csv": "timestamp,value,source\n2026-01-01T00:00:00+02:00,1,x\n2026-01-01T00:00:00+00:00,2,y\n"
    "2025-12-31T00:00:00-01:30,3,x\n",
    "dates.csv": "Timestamp, Value \n2026-01-01,1\n2026-01-02,2\n",
}


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
@pytest.mark.parametrize("source", [None, "over"])
def test_the_vectorised_path_equals_the_row_by_row_path_on_good_files(tmp_path, name, source):
    """Good files go through the polars reader (`read_fast`); the rules must store exactly what they store
    from the general reader (`read_user_file`, whose rows and values name bad rows): same rows, values,
    types, notes."""
    from nq_dagster.ingest.read import read_fast, read_user_file
    from nq_dagster.ingest.rules import check_columns

    path = write(tmp_path, name, GOOD_FILES[name])
    data = path.read_bytes()
    columns = read_fast(path, data)
    assert columns is not None, "a good file should take the vectorised path"
    fast = check_columns(columns, path, source)
    slow = check_columns(read_user_file(path, data), path, source)
    # the frame is polars (written through Arrow as it is)
    assert isinstance(fast.clean, pl.DataFrame) and fast.clean["source"].dtype == pl.String
    pd.testing.assert_frame_equal(fast.clean.to_pandas(), slow.clean.to_pandas())
    assert fast.bad == slow.bad == [] and fast.notes == slow.notes
    mixed = write(
        tmp_path, "mixed.csv", "timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01.5Z,2\n"
    )
    mixed_fast = check_columns(read_fast(mixed, mixed.read_bytes()), mixed, source)  # two shapes: one parser
    mixed_slow = check_columns(read_user_file(mixed, mixed.read_bytes()), mixed, source)
    pd.testing.assert_frame_equal(mixed_fast.clean.to_pandas(), mixed_slow.clean.to_pandas())
    pq_path = tmp_path / (path.stem + ".parquet")  # the same rows as Parquet, typed columns
    slow.clean.to_pandas().drop(columns="_row").to_parquet(pq_path)
    fast_pq = check_columns(read_fast(pq_path, pq_path.read_bytes()), pq_path, source or "p")
    slow_pq = check_columns(read_user_file(pq_path, pq_path.read_bytes()), pq_path, source or "p")
    pd.testing.assert_frame_equal(fast_pq.clean.to_pandas(), slow_pq.clean.to_pandas())


def _chunked_case(kind: str, n: int = 5000) -> str:
    rng = np.random.default_rng(7)
    lines = ["timestamp,value,source"]
    for i in range(n):
        ts, value, src = f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", f"{i}.5", "a"
        if kind == "bad_values" and rng.random() < 0.3:
            value = rng.choice(["x", "", "inf", "true", "1e-400"])
        if kind == "repeats" and i % 700 == 699:
            ts = "2026-01-01T00:00:05Z"  # a repeat of row 7, many chunks later
        if kind == "sources":
            src = ["a", "b", "bad name", "c"][i % 4]
        if kind == "unordered" and i % 2:
            ts = f"2025-12-31T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
        if kind == "bad_times" and i % 3 == 0:
            ts = rng.choice(["now", "9999-12-31T00:00:00Z", " 2026-01-01 ", "2016-12-31T23:59:60Z"])
        lines.append(f"{ts},{value},{src}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", ["good", "bad_values", "repeats", "sources", "unordered", "bad_times"])
def test_a_csv_checked_in_chunks_has_the_verdict_of_one_read(tmp_path, monkeypatch, kind):
    """The general CSV path checks a file chunk by chunk (`check_chunks`, bounded memory); its clean rows,
    bad rows (named and counted), notes are those of the whole file read at once and checked by
    `check_columns`, with rows, repeats and sources spread over several chunks."""
    from nq_dagster.ingest import read
    from nq_dagster.ingest.read import csv_chunks, csv_texts, read_user_file
    from nq_dagster.ingest.rules import check_chunks, check_columns

    monkeypatch.setattr(read, "CSV_CHUNK_VALUES", 1)  # chunks of 1,024 rows: 5 of them
    path = write(tmp_path, f"{kind}.csv", _chunked_case(kind))
    data = path.read_bytes()
    assert len(list(csv_chunks(path, data))) == 5
    whole = check_columns(read_user_file(path, data), path, None)
    texts = lambda column, at: csv_texts(path, data, read.DEFAULT_OPTIONS, column, at)  # noqa: E731
    chunked = check_chunks(csv_chunks(path, data), path, None, data.count(b"\n") + 1, texts=texts)
    pd.testing.assert_frame_equal(whole.clean.to_pandas(), chunked.clean.to_pandas())
    assert chunked.bad == whole.bad and chunked.notes == whole.notes
    assert chunked.bad_count == whole.bad_count
    assert (kind in ("good", "unordered")) == (whole.bad_count == 0)  # (each case meets its rule)
    assert kind != "unordered" or any("order" in note for note in whole.notes)


def test_sorting_note_is_per_source(wh, tmp_path):
    """Two sources interleaved, each in time order: no "out of time order" note (the check was across
    sources)."""
    text = (
        "timestamp,value,source\n2026-01-01T00:01:00Z,1,a\n2026-01-01T00:00:00Z,1,b\n"
        "2026-01-01T00:02:00Z,2,a\n2026-01-01T00:01:00Z,2,b\n"
    )
    r = Ingestor(wh).ingest_file(write(tmp_path, "two.csv", text))
    assert r.status == "ingested" and not any("order" in n for n in r.notes)
    from nq_dagster.ingest.read import read_user_file
    from nq_dagster.ingest.rules import check_columns

    path = tmp_path / "two.csv"
    notes = check_columns(read_user_file(path, path.read_bytes()), path, None).notes
    assert not any("order" in n for n in notes)


def test_field_count_long_values_and_rename(wh, tmp_path, capsys):
    """An extra field in the first data row is a field-count error; a huge bad value is shown cut to 200
    characters (message, reason file, log); a file whose value column is named differently is refused for a
    known source with the fix, and `--rename reading=value` stores it under the source's name (never as
    NULL)."""
    from nq_dagster.cli import main

    ing = Ingestor(wh)
    r = ing.ingest_file(
        write(tmp_path, "extra.csv", "timestamp,value\n2026-01-01T00:00:00Z,1,extra\n"), source="e"
    )
    assert r.status == "quarantined" and "row 2 has more fields than the header's 2" in r.reason
    # (a line past NQ_INGEST_MAX_LINE_BYTES is refused before it is parsed: tests/test_hostile_ingest.py)
    from nq_dagster.ingest.limits import IngestLimits

    r = Ingestor(wh, IngestLimits(max_line_bytes=8_000_000)).ingest_file(
        write(tmp_path, "huge.csv", "timestamp,value\n2026-01-01T00:00:00Z," + "x" * 5_000_000 + "\n"),
        source="e",
    )
    assert r.status == "quarantined" and len(r.reason) < 1000 and "5,000,000 characters" in r.reason
    assert (wh.quarantine / "huge.csv.reason.txt").stat().st_size < 5000
    assert ing.ingest_file(write(tmp_path, "first.csv", GOOD), source="k").status == "ingested"
    other = write(
        tmp_path, "other.csv", "timestamp,reading\n2026-01-02T00:00:00Z,7.5\n2026-01-02T00:01:00Z,8\n"
    )
    r = ing.ingest_file(other, source="k")
    assert r.status == "quarantined" and "--rename found=expected" in r.reason
    assert (
        main(["--home", str(wh.home), "ingest", str(other), "--source", "k", "--rename", "reading=value"])
        == 0
    )
    stored = wh.read_table("raw_ticks", "k")
    assert list(stored.columns) == ["source", "timestamp", "value", "file", "content_hash"]
    assert stored.sort_values("timestamp")["value"].tolist() == [1.5, 2.5, 3.0, 7.5, 8.0]
    assert (
        main(["--home", str(wh.home), "ingest", str(other), "--source", "k2", "--rename", "level=value"]) == 1
    )
    said = capsys.readouterr()
    assert "has no column 'level'" in said.out + said.err


def test_live_predictions_are_compacted_and_training_part_is_left_alone(wh):
    """The streaming job and the server write a `predictions` part per run / flush: past the limit those live
    parts merge into one live part (`stream-compact-...`) with every row once; training's `data` part is not
    touched, is still rewritten by name afterwards, and keeps the compacted live part beside it."""
    from nq_dagster.assets.fusion import live_prediction_times
    from nq_dagster.store import LIVE_PARTS

    def frame(t0, n, tag):
        ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(t0, t0 + n), unit="s")
        return pd.DataFrame({"timestamp": ts, "direction": tag, "confidence": np.linspace(0.4, 0.9, n)})

    wh.write_table("predictions", "s", frame(0, 100, "trained"))  # training's walk-forward rows: part "data"
    for k in range(70):
        wh.write_table(
            "predictions",
            "s",
            frame(100 + 3 * k, 3, "live"),
            part=(f"stream-{k:010d}-{k + 1:010d}" if k % 2 else f"serve-r0-{k:06d}"),
        )
    before = wh.read_table("predictions", "s").sort_values("timestamp").reset_index(drop=True)
    times = sorted(live_prediction_times(wh, "s"))
    assert wh.compact_if_many("predictions", "s", limit=80) is None  # 70 live parts: under the limit
    r = wh.compact_if_many("predictions", "s", limit=64)
    assert r and r["parts_before"] == 70 and r["compacted"].startswith("stream-compact-")
    parts = sorted(p.stem for p in wh.table_parts("predictions", "s"))
    assert parts == ["data", r["compacted"]]
    after = wh.read_table("predictions", "s").sort_values("timestamp").reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)  # every row once, same content
    assert sorted(live_prediction_times(wh, "s")) == times and len(times) == 210
    # training rewrites its part by name and drops the other non-live parts; the compacted live part stays
    wh.write_table("predictions", "s", frame(0, 120, "retrained"))
    wh.drop_other_parts("predictions", "s", keep="data", keep_prefixes=LIVE_PARTS)
    again = wh.read_table("predictions", "s")
    assert (again["direction"] == "retrained").sum() == 120 and (again["direction"] == "live").sum() == 210
    with pytest.raises(ValueError, match="append-only"):
        wh.compact("features", "s")


def test_compaction_leaves_big_parts_alone(wh):
    """Parts of `compact_big_rows` rows or more are not merged again (a compaction then costs the new small
    parts, not the history): the small parts merge into one, the big one stays, every row once."""
    from nq_dagster.store import Warehouse

    wh = Warehouse(wh.home, compact_big_rows=100)

    def frame(t0, n):
        ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(t0, t0 + n), unit="s")
        return pd.DataFrame({"timestamp": ts, "value": np.arange(t0, t0 + n, dtype=float)})

    wh.write_table("raw_ticks", "b", frame(0, 150), part="part-history")
    for k in range(6):
        wh.write_table("raw_ticks", "b", frame(150 + 5 * k, 5), part=f"serve-r0-{k:06d}")
    r = wh.compact("raw_ticks", "b")
    assert r["parts_before"] == 7 and r["rows"] == 180 and r["rows_merged"] == 30
    stems = sorted(p.stem for p in wh.table_parts("raw_ticks", "b"))
    assert stems[1] == "part-history" and stems[0].startswith("compact-") and len(stems) == 2
    got = wh.read_table("raw_ticks", "b").sort_values("timestamp")
    assert len(got) == 180 and (got["value"].to_numpy() == np.arange(180)).all()
    assert wh.compact("raw_ticks", "b")["compacted"] is None  # one small part left: nothing to merge


def test_duplicates_against_store_are_per_source_in_a_multi_source_file(wh, tmp_path):
    """Rows of a many-source file that repeat a stored (source, timestamp) are the bad ones, found per source
    and reported with their own row numbers; another source's rows at the same instants are kept."""
    Ingestor(wh).ingest_file(
        write(tmp_path, "b.csv", "timestamp,value\n2026-01-01T00:01:00Z,9\n2026-01-01T00:03:00Z,9\n")
    )
    text = "timestamp,value,source\n" + "".join(
        f"2026-01-01T00:0{m}:00Z,{m},{s}\n" for m in range(5) for s in "ab"
    )
    r = Ingestor(wh).ingest_file(write(tmp_path, "both.csv", text), skip_bad_rows=True)
    assert r.status == "ingested-with-bad-rows" and r.sources == {"a": 5, "b": 3}
    # b's rows at minutes 1 and 3 are lines 5 and 9 (header = line 1, a and b alternate)
    assert [(b.row, b.column) for b in r.bad_rows] == [(5, "timestamp"), (9, "timestamp")]
    assert all("already stored for source 'b'" in b.problem for b in r.bad_rows)
    b = wh.read_table("raw_ticks", "b").sort_values("timestamp")
    assert list(b["value"]) == [0.0, 9.0, 2.0, 9.0, 4.0]
    assert list(wh.read_table("raw_ticks", "a").sort_values("timestamp")["value"]) == [
        0.0,
        1.0,
        2.0,
        3.0,
        4.0,
    ]


def test_the_hash_is_of_the_bytes_parsed_when_the_file_changes_while_read(wh, tmp_path, monkeypatch):
    """The file is hashed by a thread that reads it beside the parse; when its size, modification time or
    inode moved meanwhile, the stored content hash is that of the bytes that were parsed, not of what the
    thread read."""
    import hashlib
    from types import SimpleNamespace

    import nq_dagster.ingest.ingestor as ing

    text = "timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,2\n"
    path = write(tmp_path, "moving.csv", text)
    assert ing._file_digest(path) == hashlib.sha256(text.encode()).hexdigest()
    monkeypatch.setattr(
        ing, "_file_digest", lambda p: "0" * 64
    )  # what a thread that read other bytes would say
    real_stat, calls = os.stat, []

    def stat(p, *a, **k):
        st = real_stat(p, *a, **k)
        calls.append(p)
        moved = len(calls) == 2  # the second look: the file was rewritten meanwhile
        return SimpleNamespace(
            st_size=st.st_size,
            st_ino=st.st_ino,
            st_dev=st.st_dev,
            st_mtime_ns=st.st_mtime_ns + (1 if moved else 0),
        )

    monkeypatch.setattr(ing, "_stat", stat)
    r = Ingestor(wh).ingest_file(path)
    assert r.status == "ingested" and r.content_hash == hashlib.sha256(text.encode()).hexdigest()
    calls.clear()
    monkeypatch.setattr(ing, "_stat", real_stat)  # unchanged: the thread's hash is kept
    r2 = Ingestor(wh).ingest_file(write(tmp_path, "still.csv", text.replace(":00Z,", ":30Z,")))
    assert r2.content_hash == "0" * 64


def test_times_a_nanosecond_clock_cannot_hold_are_refused_by_name():
    """Year 9999, year 1, or an epoch past 2262-04-11 never reach a store or a clock that would overflow:
    each is refused as "timestamp outside the range" (the scalar shortcut declines, the rules name it), and
    a good tick beside it is accepted."""
    from nq_dagster.ingest import check_ticks, fast_validate_ticks

    far = [("a", "9999-12-31T00:00:00Z", 1.0), ("a", "0001-01-01T00:00:00Z", 1.0), ("a", 9.3e18 / 1e6, 1.0)]
    for tick in far:
        assert fast_validate_ticks([tick]) is None
    check = check_ticks([*far, ("b", "2026-01-01T00:00:00Z", 2.0)])
    assert [p.kind for p in check.problems] == ["time_range"] * 3
    assert "2262-04-11" in check.problems[0].describe("request")
    assert [(t.source, t.value) for t in check.clean] == [("b", 2.0)]


def test_relative_words_are_not_times_and_a_trailing_newline_is_not_a_source_name():
    """Issue 31 item 6 and issue 26 item 9: "now" and "today" would be stored as the ingest's own wall clock;
    they are refused like any text that is not a time. A source name ending in a newline passed `$`."""
    from nq_dagster.ingest import check_ticks
    from nq_dagster.store import SOURCE_RE

    check = check_ticks([("a", "now", 1.0), ("a", "today", 2.0), ("a", "2026-01-05T10", 3.0)])
    assert [p.kind for p in check.problems] == ["timestamp", "timestamp"]
    assert [t.value for t in check.clean] == [3.0]
    assert SOURCE_RE.match("market_A") and not SOURCE_RE.match("market_A\n")
