"""`nq query` is a read-only sandbox over the warehouse: SELECTs over the tables and logs work; writing,
attaching, installing, changing settings and reading files outside the warehouse are refused with one line,
and change nothing."""

import pandas as pd
import pytest

from nq_dagster.cli import main


@pytest.fixture
def home(wh, tmp_path):
    df = pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=5, freq="min", tz="UTC").astype(str),
            "value": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    df.to_csv(tmp_path / "a.csv", index=False)
    assert main(["--home", str(wh.home), "ingest", str(tmp_path / "a.csv"), "--source", "a"]) == 0
    return wh


def q(home, sql, capsys):
    capsys.readouterr()
    rc = main(["--home", str(home.home), "query", sql, "--format", "csv"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_selects_work_and_logs_are_queryable_while_empty(home, capsys):
    rc, out, err = q(home, "SELECT count(*) AS n, sum(value) AS s FROM raw_ticks", capsys)
    assert rc == 0 and out.splitlines()[1] == "5,15.0", err
    rc, out, _ = q(home, "SELECT count(*) AS n FROM ingest_log", capsys)
    assert rc == 0 and out.splitlines()[1] == "1"
    rc, out, err = q(home, "SELECT count(*) AS n FROM run_failures", capsys)
    assert rc == 0 and out.splitlines()[1] == "0", err


@pytest.mark.parametrize(
    "sql, word",
    [
        (
            "COPY (SELECT 1 AS x) TO '{home}/warehouse/raw_ticks/source=a/part-evil.parquet' (FORMAT "
            "parquet)",
            "COPY",
        ),
        ("EXPORT DATABASE '{home}/exported'", "EXPORT"),
        ("ATTACH '{home}/other.duckdb' AS e (READ_WRITE)", "ATTACH"),
        ("INSTALL httpfs", "LOAD"),  # DuckDB files INSTALL under the LOAD statement type
        ("LOAD httpfs", "LOAD"),
        ("SET enable_external_access = true", "SET"),
        ("RESET allowed_directories", "SET"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("SELECT 1; DROP VIEW raw_ticks", "DROP"),
        ("SELECT * FROM read_csv('/etc/passwd', sep=':')", "outside the warehouse"),
        ("SELECT * FROM read_text('{home}/serve/secret')", "outside the warehouse"),
        ("SELECT * FROM read_parquet('{home}/warehouse/../artifacts/*.npz')", "outside the warehouse"),
    ],
)
def test_everything_else_is_refused_in_one_line(home, capsys, sql, word):
    before = sorted(p.relative_to(home.home) for p in home.home.rglob("*") if ".lock" not in p.name)
    (home.home / "serve").mkdir(exist_ok=True)
    (home.home / "serve" / "secret").write_text("s3cr3t")
    rc, out, err = q(home, sql.format(home=home.home), capsys)
    assert rc == 1 and err.startswith("query failed:") and len(err.strip().splitlines()) == 1, err
    assert word in err and "s3cr3t" not in out + err
    after = sorted(p.relative_to(home.home) for p in home.home.rglob("*") if ".lock" not in p.name)
    assert [p for p in after if p not in before] in ([], [p for p in after if p.parts[0] == "serve"])


def test_the_same_file_for_another_source_is_stored_for_it(home, tmp_path, capsys):
    """De-duplication is keyed by (source, content): the same bytes ingested for another source are stored
    there; for the same source again they are skipped; an invalid source name is refused before anything
    else."""
    f = str(tmp_path / "a.csv")
    assert main(["--home", str(home.home), "ingest", f, "--source", "b"]) == 0
    assert "ingested" in capsys.readouterr().out
    assert main(["--home", str(home.home), "ingest", f, "--source", "b"]) == 0
    assert "skipped-duplicate-file" in capsys.readouterr().out
    rc, out, _ = q(home, "SELECT source, count(*) AS n FROM raw_ticks GROUP BY 1 ORDER BY 1", capsys)
    assert out.splitlines()[1:] == ["a,5", "b,5"]
    assert main(["--home", str(home.home), "ingest", f, "--source", "../evil"]) == 2
    assert (
        "not valid" in capsys.readouterr().err
        and not (home.tables_dir / "raw_ticks" / "source=../evil").exists()
    )


def test_a_file_with_other_value_columns_is_refused_for_a_known_source(home, tmp_path, capsys):
    """The first file fixes a source's value columns: `timestamp,reading` for a source stored as
    `timestamp,value` is quarantined with both column lists named; nothing is stored as NULLs."""
    df = pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-02-01", periods=3, freq="min", tz="UTC").astype(str),
            "reading": [1.0, 2.0, 3.0],
        }
    )
    df.to_csv(tmp_path / "other.csv", index=False)
    assert main(["--home", str(home.home), "ingest", str(tmp_path / "other.csv"), "--source", "a"]) == 1
    err = capsys.readouterr().err
    assert "value columns ['reading'] differ from source 'a''s columns ['value']" in err
    rc, out, _ = q(home, "SELECT count(*) AS n, count(value) AS v FROM raw_ticks WHERE source = 'a'", capsys)
    assert out.splitlines()[1] == "5,5"
    assert (home.quarantine / "other.csv.reason.txt").exists()


def test_an_old_duckdb_file_is_migrated_and_a_moved_home_still_reads(wh, tmp_path):
    """A data directory from before the in-memory layout kept the log tables in nq.duckdb: their rows are
    moved into Parquet once; no database file is written any more; the whole directory can move (views are
    built per query from the parts found there)."""
    import shutil

    import duckdb

    from nq_dagster.ingest import INGEST_LOG_DDL, Ingestor
    from nq_dagster.store import Warehouse

    con = duckdb.connect(str(wh.home / "nq.duckdb"))
    con.execute(INGEST_LOG_DDL)
    con.execute("INSERT INTO ingest_log VALUES ('abc', 'old.csv', 'a', 3, 0, 'ingested', NULL, now())")
    con.close()
    (tmp_path / "new.csv").write_text("timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,2\n")
    Ingestor(wh).ingest_file(tmp_path / "new.csv", source="b")
    log = wh.query("SELECT file FROM ingest_log ORDER BY ingested_at")
    assert [f.rsplit("/", 1)[-1] for f in log["file"]] == ["old.csv", "new.csv"]
    assert not (wh.home / "nq.duckdb").exists() and (wh.home / "nq.duckdb.migrated").exists()
    moved = tmp_path / "elsewhere"
    shutil.move(str(wh.home), moved)
    assert Warehouse(moved).query("SELECT count(*) AS n FROM raw_ticks")["n"].iloc[0] == 2
    assert (
        Warehouse(moved).user_query("SELECT count(*) AS n FROM run_failures")["n"].iloc[0] == 0
    )  # empty, queryable


def test_user_query_is_bounded_in_time_memory_and_rows(wh):
    """`nq query` cannot run for ever, take the machine's memory, or print a billion rows: each bound refuses
    in one line naming the setting to raise (and the spill directory is off: nothing is written under the
    cwd)."""
    from nq_dagster.store.views import QueryLimits, QueryRefused

    with pytest.raises(QueryRefused, match="time limit of 0.5 s"):
        wh.user_query("SELECT count(*) FROM range(100000000000)", QueryLimits(timeout_s=0.5))
    with pytest.raises(QueryRefused, match="memory limit of 100MB"):
        wh.user_query("SELECT list(range) FROM range(300000000)", QueryLimits(memory_limit="100MB"))
    df = wh.user_query("SELECT * FROM range(10) t(a), range(10) u(b)", QueryLimits(max_rows=7))
    assert len(df) == 7 and df.attrs["truncated"]
    assert not wh.user_query("SELECT 1 AS one").attrs["truncated"]


def test_every_source_partitioned_table_has_a_source_column(wh):
    """Issue 28 item 1: `series`, `features`, ... hold no `source` column of their own; their views take it
    from the partition, so `WHERE source = 'x'` works and a count no longer mixes sources."""
    import pandas as pd

    for src, n in (("a", 3), ("b", 5)):
        wh.write_table(
            "series",
            src,
            pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=n, tz="UTC"), "value": range(n)}),
        )
    got = wh.user_query("SELECT source, count(*) AS n FROM series GROUP BY 1 ORDER BY 1")
    assert got.to_dict("records") == [{"source": "a", "n": 3}, {"source": "b", "n": 5}]
    assert wh.query("SELECT count(*) AS n FROM series WHERE source = 'b'")["n"].iloc[0] == 5
