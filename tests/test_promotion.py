"""The promotion gate (issue 30): a new model version replaces the served one only if it is not significantly
worse on realized rows neither trained on; decisions recorded, listed by `nq models`, acted on by training's
`serving_state` and the server's watcher."""

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd

from nq_dagster.fusion.walkforward import CLASSES, direction_of
from nq_dagster.store import register
from nq_dagster.validation import promotion


@register
@dataclass
class _Version:  # what the registry table reads of a served state: its model's version
    model_version: str


@register
@dataclass
class _Served:
    model: _Version


def SimpleServed(version: str) -> _Served:  # noqa: N802
    return _Served(_Version(version))


def _case(n: int = 600, new_noise: float = 0.3, cur_noise: float = 0.3, seed: int = 0):
    """A fusion output whose walk-forward rows 100.. are predicted by a new model and a current one, each the
    true change plus noise of the given size; the current version trained up to row 99."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(n)
    band = np.full(n, 0.05)
    y_dir = direction_of(y, band)
    y_dir[-1] = -9  # the last target is not realized yet
    rows = np.arange(100, n)

    def probs(pred):
        P = np.full((n, 3), 0.1)
        P[np.arange(n), np.searchsorted(CLASSES, direction_of(pred, band))] = 0.8
        return P

    new = y + new_noise * rng.standard_normal(n)
    cur = y + cur_noise * rng.standard_normal(n)
    fused = pd.DataFrame(
        {"row": rows, "pred_change": new[rows], "direction": direction_of(new, band)[rows], "model_id": 0}
    )
    fusion = {
        "fused": fused,
        "targets": pd.DataFrame({"change": y, "direction": y_dir, "band": band}),
        "incumbent": {"pred_change": cur, "probs": probs(cur)},
    }
    ts = pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC")
    current = SimpleNamespace(model_version="v-old", train_end_ns=int(ts[99].value), design=6, config={})
    return fusion, current, ts.to_numpy()


def test_a_clearly_worse_version_is_rejected_with_the_figures():
    fusion, current, ts = _case(new_noise=1.5, cur_noise=0.2)
    d = promotion.decide(fusion, current, "", ts, "v-new")
    assert d["status"] == "rejected" and d["current_version"] == "v-old"
    assert d["rows"] == 499  # rows 100 .. 598: after the current version's training, realized
    assert d["accuracy_new"] < d["accuracy_current"] and d["mse_new"] > d["mse_current"]
    assert d["p_holm_accuracy"] < 0.05 and d["p_holm_mse"] < 0.05
    assert d["reason"].startswith("rejected: significantly less accurate and higher squared error")


def test_an_equal_or_better_version_is_promoted():
    fusion, current, ts = _case(new_noise=0.3, cur_noise=0.3)
    d = promotion.decide(fusion, current, "", ts, "v-new")
    assert d["status"] == "promoted" and d["p_holm_accuracy"] >= 0.05 and d["p_holm_mse"] >= 0.05
    fusion, current, ts = _case(new_noise=0.2, cur_noise=1.5)
    assert promotion.decide(fusion, current, "", ts, "v-new")["status"] == "promoted"


def test_only_rows_the_current_version_did_not_train_on_are_compared():
    """A current version trained up to the last rows leaves too few to test: promoted, with why."""
    fusion, current, ts = _case(new_noise=1.5, cur_noise=0.2)
    current.train_end_ns = int(pd.Timestamp(ts[580]).value)
    d = promotion.decide(fusion, current, "", ts, "v-new")
    assert d["status"] == "promoted" and d["rows"] == 18 and "without a test" in d["reason"]


def test_without_a_comparable_current_version_the_new_one_is_promoted_and_says_why():
    cur = SimpleNamespace(model_version="v", design=5, config={"version": "a", "train_min": 500})
    assert "design 5" in promotion.comparable(cur, {"version": "b", "train_min": 500}, 6)
    cur.design = 6
    assert promotion.comparable(cur, {"version": "b", "train_min": 500}, 6) == ""
    assert "train_min" in promotion.comparable(cur, {"version": "b", "train_min": 300}, 6)
    assert promotion.comparable(None, {}, 6) == "no version is served yet"
    fusion, current, ts = _case(new_noise=1.5, cur_noise=0.2)
    d = promotion.decide(fusion, None, "no version is served yet", ts, "v-new")
    assert d["status"] == "promoted" and "no version is served yet" in d["reason"]


def test_registry_lists_current_promoted_and_rejected(wh):
    """Decisions are appended per source; the table marks the served one current."""
    from nq_dagster.cli import main

    for version, status in (("v1", "promoted"), ("v2", "promoted"), ("v3", "rejected")):
        promotion.record(wh, "s", {"model_version": version, "status": status, "reason": status, "rows": 0})
    wh.save_artifact("serving_state", "s", SimpleServed("v2"))
    assert promotion.status_of(wh, "s", "v3") == "rejected" and promotion.status_of(wh, "s", "v9") is None
    t = promotion.versions_table(wh, ["s"]).set_index("model_version")
    assert t.loc["v1", "status"] == "promoted" and t.loc["v2", "status"] == "current"
    assert t.loc["v3", "status"] == "rejected"
    assert main(["--home", str(wh.home), "models", "--format", "csv"]) == 0


def test_retrains_go_through_the_gate_and_a_rejected_version_is_never_served(
    wh, tmp_path, capsys, monkeypatch
):
    """`nq run` on a source, then again with more rows: the second version is tested against the first on the
    new rows and its decision recorded. A version the gate rejects (forced here) leaves the served state as it
    was, is kept as `candidate_state`, is listed by `nq models` as rejected, and the server's watcher refuses
    it even if it is put in place of the served state."""
    from nq_dagster.cli import main
    from nq_dagster.demo import mackey_glass
    from nq_dagster.fusion.predictor import Predictor
    from nq_dagster.serve.engine.ownership import Ownership
    from nq_dagster.serve.engine.ticklog import TickLog
    from nq_dagster.serve.engine.watcher import Models

    home = str(wh.home)
    v = mackey_glass(620)
    v.iloc[:420].to_csv(tmp_path / "a.csv", index=False)
    v.iloc[420:].to_csv(tmp_path / "b.csv", index=False)
    assert main(["--home", home, "ingest", str(tmp_path / "a.csv"), "--source", "mg"]) == 0
    assert main(["--home", home, "run", "--source", "mg"]) == 0
    first = promotion.history(wh, "mg")
    assert [d["status"] for d in first] == ["promoted"] and "no version is served yet" in first[0]["reason"]
    assert main(["--home", home, "ingest", str(tmp_path / "b.csv"), "--source", "mg"]) == 0
    assert main(["--home", home, "run", "--source", "mg"]) == 0
    second = promotion.history(wh, "mg")[-1]
    assert second["current_version"] == first[0]["model_version"] and second["rows"] >= 150
    assert {"accuracy_new", "accuracy_current", "p_holm_accuracy", "p_holm_mse"} <= set(second)
    served = wh.load_artifact("serving_state", "mg").model.model_version
    assert served == (
        second["model_version"] if second["status"] == "promoted" else first[0]["model_version"]
    )

    real = promotion.decide
    monkeypatch.setattr(
        promotion, "decide", lambda *a: {**real(*a), "status": "rejected", "reason": "rejected: forced"}
    )
    mtime = wh.artifact_mtime_ns("serving_state", "mg")
    assert main(["--home", home, "run", "--source", "mg"]) == 0
    third = promotion.history(wh, "mg")[-1]
    assert third["status"] == "rejected"
    assert wh.artifact_mtime_ns("serving_state", "mg") == mtime  # the served state was not touched
    assert wh.load_artifact("serving_state", "mg").model.model_version == served
    candidate = wh.load_artifact(promotion.CANDIDATE, "mg")
    assert candidate.model.model_version == third["model_version"] != served
    capsys.readouterr()
    assert main(["--home", home, "models", "--source", "mg", "--format", "json"]) == 0
    listed = pd.read_json(__import__("io").StringIO(capsys.readouterr().out))
    assert listed.set_index("model_version").loc[third["model_version"], "status"] == "rejected"
    assert listed.set_index("model_version").loc[served, "status"] == "current"

    wh.save_artifact("serving_state", "mg", candidate)  # a rejected version where the served one should be
    models = Models(wh, Ownership(), Predictor(), TickLog(tmp_path / "wal"))
    assert models.load("mg") == "failed" and "rejected by the promotion gate" in models.errors["mg"]


def test_the_decision_states_which_rows_it_compared():
    fusion, current, ts = _case(new_noise=0.3, cur_noise=0.3)
    d = promotion.decide(fusion, current, "", ts, "v-new")
    assert d["first_row_time"] == str(pd.Timestamp(ts[100]).tz_convert("UTC"))  # the first row after training
    assert d["last_row_time"] == str(pd.Timestamp(ts[598]).tz_convert("UTC"))  # the last realized one
    assert d["compared_rows"].startswith("499 realized walk-forward rows from " + d["first_row_time"])
    assert d["unrealized_gap"] == 0
