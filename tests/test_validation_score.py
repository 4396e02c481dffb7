"""The validation score never rewards no skill: known answers of its tests, and models without skill (a
constant direction, a copy of the best baseline) scored 0 with the reasons."""

import numpy as np
import pytest

from nq_dagster.fusion.baselines import run_baselines
from nq_dagster.fusion.walkforward import make_targets
from nq_dagster.validation.evaluate import evaluate, holm, mcnemar_greater


def test_holm_known_answer():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06,
    # 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_mcnemar_known_answer():
    a = np.array([True] * 10 + [True] * 5 + [False] * 5)
    b = np.array([False] * 10 + [True] * 5 + [False] * 5)
    assert mcnemar_greater(a, b) == pytest.approx(0.5**10)  # 10 discordant pairs, all for a
    assert mcnemar_greater(b, a) == pytest.approx(1.0)
    assert mcnemar_greater(a, a) == 1.0  # identical: no evidence either way


@pytest.fixture(scope="module")
def rising():
    """An AR(1) in the changes around an upward drift: the baselines have real skill here."""
    rng = np.random.default_rng(4)
    d = np.zeros(2500)
    for t in range(1, len(d)):
        d[t] = 0.2 + 0.6 * (d[t - 1] - 0.2) + rng.standard_normal()
    v = 100 + np.cumsum(d)
    targets = make_targets(v, 1, 0.1, 50)
    frames, season = run_baselines(v, targets, 1, 500, 250, 50, 0.3)
    return v, targets, frames


def fusion_with(targets, frames, fused):
    return {"targets": targets, "fused": fused, "baselines": frames, "ablations": {"same": fused.copy()}}


def test_a_constant_direction_scores_zero(rising):
    """'down' on every row of a rising series: no skill, score 0, and the verdict says why."""
    _, targets, frames = rising
    fused = frames["persistence"].copy()
    fused[["p_down", "p_hold", "p_up"]] = [0.8, 0.1, 0.1]
    fused["direction"], fused["confidence"] = -1, 0.8
    m = evaluate(fusion_with(targets, frames, fused))["metrics"]
    assert m["score"] == 0 and not m["skill"]
    assert m["verdict"].startswith("no skill: accuracy") and "best constant predictor" in m["verdict"]


def test_a_copy_of_the_best_baseline_scores_zero(rising):
    """The best baseline itself beats the constant predictor by far, but is no better than the best baseline:
    no skill beyond the baselines, score 0; and an ablation identical to the model is not counted."""
    _, targets, frames = rising
    ev = evaluate(fusion_with(targets, frames, frames["ar_diffs"].copy()))
    m = ev["metrics"]
    assert m["p_binom"] < 1e-6  # far above the best constant predictor...
    assert (
        m["score"] == 0
        and not m["skill"]
        and "not significantly more accurate than the best baseline" in m["verdict"]
    )
    abl = ev["criteria"].iloc[-1]
    assert not abl["counted"] and "not counted" in abl["figure"]


def test_baselines_beat_the_constant_on_an_ar_process(rising):
    """Sanity of the baselines under the one scoring rule: AR on the changes finds the AR(1) structure."""
    _, targets, frames = rising
    f = frames["ar_diffs"]
    y = targets["direction"].to_numpy()[f["row"]]
    ok = y != -9
    acc = np.mean(f["direction"].to_numpy()[ok] == y[ok])
    assert acc > max(np.mean(y[ok] == c) for c in (-1, 0, 1)) + 0.05


def closer_changes(targets, base):
    """`base`'s rows with a forecast change halfway to the realized one: a far lower squared error."""
    out = base.copy()
    truth = targets["change"].to_numpy()[out["row"].to_numpy()]
    out["pred_change"] = 0.5 * out["pred_change"].to_numpy() + 0.5 * np.nan_to_num(truth)
    return out


def test_lower_squared_error_but_less_accurate_in_direction_is_no_skill(rising):
    """The record claims a direction: a model of far lower squared error than every baseline but wrong in
    direction on a tenth of the rows where the best baseline is right has no skill, and the verdict names the
    baseline it is worse than (the report's own figures)."""
    _, targets, frames = rising
    fused = closer_changes(targets, frames["ar_diffs"])
    y = targets["direction"].to_numpy()[fused["row"].to_numpy()]
    right = np.flatnonzero(fused["direction"].to_numpy() == y)
    wrong = np.random.default_rng(0).choice(right, len(fused) // 10, replace=False)
    flipped = fused["direction"].to_numpy().copy()
    flipped[wrong] = np.where(y[wrong] == 1, -1, 1)
    fused["direction"] = flipped
    m = evaluate(fusion_with(targets, frames, fused))["metrics"]
    assert m["p_dm_best"] < 1e-6  # far better in squared error...
    assert not m["skill"] and m["score"] == 0  # ...yet no skill
    assert m["verdict"].startswith("no skill") and "significantly worse than" in m["verdict"]
    assert "ar_diffs" in m["significantly_worse_than"]


def test_squared_error_alone_is_stated_as_such(rising):
    """The best baseline's directions with a better change forecast: skill in squared error only, score 0."""
    _, targets, frames = rising
    m = evaluate(fusion_with(targets, frames, closer_changes(targets, frames["ar_diffs"])))["metrics"]
    assert not m["skill"] and m["score"] == 0
    assert m["verdict"].startswith("skill in squared error only")
