"""Validation report: HTML with plots (written atomically to reports/) and a Markdown summary for the UI."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nq_dagster.fusion.record import GAP_TOLERANCE  # noqa: E402
from nq_dagster.store import atomic_write_bytes  # noqa: E402

COST_BP = 5.0  # trading cost of the report's return chart, basis points per unit of position change
from nq_dagster.validation.evaluate import SCORE_DEFINITION  # noqa: E402
from nq_dagster.validation.stats import fmt_p  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(df: pd.DataFrame) -> str:
    html = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
    return f"<div class='scroll'>{html}</div>"


def _fields(row: dict) -> str:
    """One record as a two-column table (field, value): readable on a laptop however many fields it has."""
    df = pd.DataFrame(
        {"field": list(row), "value": [f"{v:.4g}" if isinstance(v, float) else v for v in row.values()]}
    )
    return _table(df)


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1f2328; max-width: 1100px;
       margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .9rem; margin: .4rem 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eaeef2; text-align: right; vertical-align: top; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; }
"""


INTERVALS_NOTE = (
    "Each record's interval_80 / interval_95 is predicted_change +- q x the model's error scale, q a "
    "conformal quantile of the realized walk-forward errors (split conformal: each error is of a model that "
    "had not seen that outcome) whose level adaptive conformal inference (Gibbs and Candes 2021) moves after "
    "each outcome, "
    "so coverage holds under drift. Coverage is the share of realized changes inside their interval; "
    "max_gap_points is the larger distance to the level, overall or over the last 30 %, in percentage points "
    "(the target: within 2 where there are at least 2,000 realized rows)."
)


def unrealized_line(m: dict) -> str:
    """How many walk-forward predictions had no outcome to score: their horizon tick came after a gap in the
    feed (later than record.GAP_TOLERANCE x the horizon's time: the server's rule), left out of every
    figure."""
    return (
        f"{m.get('unrealized_gap', 0)} predictions unrealized: gap (the tick at the horizon came more than "
        f"{GAP_TOLERANCE:g} x the horizon's time after the prediction; left out of accuracy, coverage and "
        "every test)."
    )


def markdown_summary(source: str, ev: dict) -> str:
    m = ev["metrics"]
    lines = [
        f"### {source}: validation score {m['score']:.0f}/100 ({m['verdict']})",
        f"{m['predictions']} held-out predictions. Directional accuracy **{m['accuracy']:.3f}** "
        f"(95 % CI {m['acc_ci_low']:.3f}-{m['acc_ci_high']:.3f}), best constant predictor "
        f"{m['majority_share']:.3f}, "
        f"binomial {fmt_p(m['p_binom'])}. Mean reported confidence {m['mean_confidence']:.3f} against "
        "accuracy "
        f"{m['accuracy']:.3f} (ECE {m['ece']:.3f}, last {m['ece_late']:.3f}). Best baseline "
        f"{m['best_baseline']} "
        f"{m['best_baseline_acc']:.3f}; significantly worse than: {m['significantly_worse_than']}.",
        "",
        "| criterion | passed | counted | figure |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.criterion} | {'yes' if r.passed else 'no'} | {'yes' if r.counted else 'no'} | {r.figure} |"
        for r in ev["criteria"].itertuples()
    ]
    lines += ["", unrealized_line(m), "", f"*Score:* {SCORE_DEFINITION}"]
    lv = ev.get("live")
    if lv and lv.get("realized"):
        lines += [
            "",
            f"Served live: {lv['served']} predictions, {lv['realized']} with a realized outcome "
            f"({lv.get('unrealized_gap', 0)} unrealized: the tick at the horizon came too late); accuracy "
            f"**{lv['accuracy']:.3f}** (95 % CI {lv['ci_low']:.3f}-{lv['ci_high']:.3f}), majority "
            f"{lv['majority_share']:.3f}, mean confidence {lv['mean_confidence']:.3f}.",
        ]
    cov = ev.get("intervals")
    if cov is not None and len(cov):
        late = cov.columns[3]
        lines += [
            "",
            "Prediction intervals (empirical coverage on realized held-out rows, overall / "
            f"{late.replace('coverage_', '').replace('_', ' ').replace('pct', ' %')}): "
            + "; ".join(
                f"{r['level']:.0%}: {r['coverage']:.3f} / {r[late]:.3f} on {r['realized']}"
                for r in cov.to_dict("records")
            ),
        ]
    return "\n".join(lines)


def strategy_returns(
    values: np.ndarray, rows: np.ndarray, pred_dir: np.ndarray, cost_bp: float = COST_BP
) -> tuple[np.ndarray, np.ndarray]:
    """(buy-and-hold log returns, the log returns of holding the predicted direction -1 / 0 / +1 over each
    predicted row after `cost_bp` basis points per unit of position change), over the held-out rows `rows`."""
    ret = np.diff(np.log(values))[rows[rows < len(values) - 1]]
    pos = np.asarray(pred_dir[: len(ret)], dtype=float)
    traded = np.abs(np.diff(np.concatenate([[0.0], pos])))
    return ret, pos * ret - cost_bp * 1e-4 * traded


LIVE_START, LIVE_END = "<section id='live'>", "</section>"  # `nq serve` rewrites what is between at each read


def live_section(live: dict | None, as_of: str = "") -> str:
    """The report's section on what was served live (`evaluate.evaluate_live`'s figures, or None). `as_of`:
    when a server computed it at the report's request (empty: when the report was written)."""
    title = "<h2>Served live (streaming job and prediction server), realized outcomes</h2>"
    if as_of:
        when = (
            f"<p>As of {html.escape(as_of)}: computed by the prediction server when this page was requested, "
            "from every prediction served live and stored (and those in the server's memory), scored on the "
            "outcomes realized since by the same rule as the held-out rows above.</p>"
        )
    else:
        when = "<p>As of this report's training.</p>"
    if not live:
        body = (
            "<p>Nothing had been served live when this report was written; opened through `nq serve` "
            "(/reports/), this section is computed at each request.</p>"
            if not as_of
            else "<p>Nothing served live yet for this source.</p>"
        )
        return f"{LIVE_START}{title}{body}{LIVE_END}"
    lines = ""
    if live.get("realized"):
        lines = (
            f"<p><b>{live['served']} predictions served live, {live['realized']} with a realized outcome: "
            f"accuracy {live['accuracy']:.3f}</b> (95 % CI {live['ci_low']:.3f}-{live['ci_high']:.3f}) "
            f"against a mean stated confidence of {live['mean_confidence']:.3f}.</p>"
        )
    else:
        lines = f"<p><b>{live['served']} predictions served live</b>, none with a realized outcome yet.</p>"
    by_version = live.get("by_model_version")
    table = (
        "<p>By model version:</p>" + _table(pd.DataFrame(by_version))
        if by_version is not None and len(by_version) > 1
        else ""
    )
    fields = {k: v for k, v in live.items() if k != "by_model_version"}
    return f"{LIVE_START}{title}{when}{lines}{_fields(fields)}{table}{LIVE_END}"


def write_report(path: Path, source: str, ev: dict, values: np.ndarray, kind: str) -> tuple[Path, list]:
    """The HTML report at `path`; returns (path, the plots as (title, base64 PNG)) so that the asset can show
    them in its metadata too."""
    figs = []
    rel = ev["reliability"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    if len(rel):
        ax.plot(rel["mean_confidence"], rel["accuracy"], "o-")
    ax.set(xlabel="reported confidence", ylabel="realized accuracy", title="Reliability diagram")
    figs.append(("Reliability", _png(fig)))
    fig, ax = plt.subplots(figsize=(7, 3))
    w = 100
    roll = lambda c: pd.Series(c.astype(float)).rolling(w, min_periods=20).mean()  # noqa: E731
    ax.plot(roll(ev["correct"]), label="fused")
    for name, d in ev["baseline_dirs"].items():
        ax.plot(roll(d == ev["y_dir"]), label=name, alpha=0.7)
    ax.set(
        xlabel="held-out prediction",
        ylabel=f"accuracy (rolling {w})",
        title="Rolling accuracy against baselines",
    )
    ax.legend(fontsize=7)
    figs.append(("Rolling accuracy", _png(fig)))
    cm = pd.crosstab(pd.Series(ev["y_dir"], name="realized"), pd.Series(ev["pred_dir"], name="predicted"))
    returns_png = None
    if kind == "market":
        # never without costs (a gross line flattered a no-skill model, issue 28), and shown only beside the
        # verdict, which is what says whether the direction has skill
        fig, ax = plt.subplots(figsize=(7, 3))
        rows = ev["rows"]
        ret = np.diff(np.log(values))[rows[rows < len(values) - 1]]
        pos = np.asarray(ev["pred_dir"][: len(ret)], dtype=float)
        traded = np.abs(np.diff(np.concatenate([[0.0], pos])))
        net = pos * ret - COST_BP * 1e-4 * traded
        ax.plot(
            np.cumsum(net), label=f"long/short on predicted direction, after {COST_BP:g} bp per unit traded"
        )
        ax.plot(np.cumsum(ret), label="buy and hold", alpha=0.7)
        ax.set(title=f"Cumulative log return after costs ({COST_BP:g} bp per unit of position change)")
        ax.legend(fontsize=7)
        returns_png = _png(fig)
    if "anomaly_points" in ev:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(values, lw=0.7, color="0.4", label="series")
        rec, flag = ev["anomaly_points"]["recorded"], ev["anomaly_points"]["flagged"]
        ax.scatter(
            rec, values[rec], s=40, facecolors="none", edgecolors="tab:green", label="recorded anomaly"
        )
        ax.scatter(
            flag, values[flag], s=14, marker="x", color="tab:red", label="flagged (> 4 sigma surprise)"
        )
        ax.set(title="Flagged anomalies against the recorded ones", xlabel="point")
        ax.legend(fontsize=7)
        figs.append(("Flagged anomalies", _png(fig)))
    body = [
        f"<h1>Validation report: {html.escape(source)}</h1>",
        f"<p><b>Validation score {ev['metrics']['score']:.0f}/100</b>: "
        f"{html.escape(ev['metrics']['verdict'])}. "
        "Every figure is measured on held-out, realized outcomes.</p>",
        f"<p>{html.escape(unrealized_line(ev['metrics']))}</p>",
        *(
            [
                f"<figure><img src='data:image/png;base64,{returns_png}'/><figcaption>Trading the "
                f"predicted direction after costs of {COST_BP:g} bp per unit of position change, beside "
                "buying and holding. The score above, not this line, says whether the direction has skill: "
                "without skill a rising line is drift or luck.</figcaption></figure>"
            ]
            if returns_png
            else []
        ),
        _table(ev["criteria"].drop(columns=["p_value", "p_holm"])),
        f"<p><b>How the score is computed.</b> {html.escape(SCORE_DEFINITION)}</p>",
        "<h2>Metrics</h2>",
        _fields(ev["metrics"]),
        "<h2>Baselines (same rows, same scoring rule)</h2>",
        _table(ev["baselines"]),
        "<p>persistence: the last change repeats; seasonal_naive: the value one season earlier (when a "
        "season is "
        "detected); ar_levels / ar_diffs: AR(p) on levels / on changes, p by AIC (statsmodels); esn: a plain "
        "echo-state network on the analog inputs. p-values are one-sided: McNemar for accuracy, "
        "Diebold-Mariano for squared error.</p>",
        "<h2>Prediction intervals: empirical coverage</h2>",
        _table(ev["intervals"])
        if ev.get("intervals") is not None and len(ev["intervals"])
        else "<p>none</p>",
        f"<p>{html.escape(INTERVALS_NOTE)}</p>",
        live_section(ev.get("live")),
        "<h2>Ablations</h2>",
        _table(ev["ablations"]),
        "<h2>Accuracy per volatility regime</h2>",
        _table(ev["regimes"]),
        "<h2>Confusion matrix (-1 down, 0 hold, 1 up)</h2>",
        cm.to_html(border=0),
    ]
    if "anomalies" in ev:
        body += ["<h2>Anomaly detection against recorded ground truth</h2>", _fields(ev["anomalies"])]
    body += [f"<h2>{t}</h2><img src='data:image/png;base64,{b}'/>" for t, b in figs]
    doc = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
        f"content='width=device-width, initial-scale=1'><title>nq validation: {html.escape(source)}</title>"
        f"<style>{STYLE}</style></head><body>"
    )
    atomic_write_bytes(path, (doc + "\n".join(body) + "</body></html>").encode())
    path.chmod(0o644)  # a report is for readers (viewers of the server, anyone with the data directory)
    return path, figs
