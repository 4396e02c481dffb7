"""The dashboard in a real browser (headless Chromium driven by Playwright): the page served by `nq serve`
shows predictions posted through the API within 2 s, a wrong key gets a clear message, the charts keep a
bounded window, the report opens for a viewer, and the page reconnects when the server restarts."""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from nq_dagster.serve.keys import KeyStore

from .serving import ThreadServer, copy_home, tick

CHROMIUM = os.environ.get("NQ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (the dev extra has it)"
)
if not CHROMIUM:
    pytest.skip(
        "no Chromium on this machine (`apt-get install -y chromium`; .ci/run installs it): the dashboard's "
        "browser test did not run",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def base(trained_base):
    return trained_base


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, url: str, key: str):
    page = browser.new_context().new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.fill("#key", key)
    page.click("#keyform button[type=submit]")
    return page, errors


def test_dashboard_shows_live_predictions(base, browser, tmp_path):
    home = copy_home(base[0], tmp_path / "nq")
    ticks = base[1]
    store = KeyStore(home)
    viewer = store.create("viewer", rate="60000/min", burst=1000)[0]
    dev = store.create("developer", rate="60000/min", burst=1000)[0]
    srv = ThreadServer(home)
    try:
        page, errors = open_page(browser, srv.url, viewer)
        page.wait_for_selector("#conn[data-state=on]", timeout=10_000)
        assert page.locator(".card").count() >= 6  # m and the clones, from /api/v1/models
        c = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {dev}"})
        for i in range(6):
            r = c.post("/api/v1/process/realtime", json=tick("m", ticks.timestamp[i], ticks.value[i]))
            pid = r.json()["prediction_id"]
            t = time.monotonic()
            page.wait_for_selector(f'.card[data-source="m"] .last[data-prediction-id="{pid}"]', timeout=2_000)
            assert time.monotonic() - t < 2.0
        text = page.inner_text('.card[data-source="m"]')
        assert "last 5 realized" in text  # six predictions, five realized by the tick after them
        assert "validation" in text and "energy" in text and "exact optimum" in text  # the quantum note
        # the heat strip has been drawn (not all white)
        ink = page.evaluate("""() => {
            const cv = document.querySelector('.card[data-source="m"] canvas.strip');
            const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
            let s = 0; for (let i = 0; i < d.length; i += 4) s += 255 - d[i]; return s; }""")
        assert ink > 0
        # the record's intervals as bands around the value line: value + interval, nested (95 % outside 80 %)
        band = page.evaluate("""() => { const c = cards.get('m');
            return c.t.map((_, i) => [c.lo95[i], c.lo80[i], c.v[i], c.hi80[i], c.hi95[i]]); }""")
        assert len(band) == 6 and all(lo95 <= lo80 <= hi80 <= hi95 for lo95, lo80, _, hi80, hi95 in band)
        assert any(hi95 > v > lo95 for lo95, _, v, _, hi95 in band)  # around the value (lo < 0 < hi mostly)
        # a bounded window: 350 more predictions, at most 300 points kept
        for i in range(6, 356, 50):
            body = {
                "source": "m",
                "data": [float(v) for v in ticks.value[i : i + 50]],
                "timestamps": [t.isoformat() for t in ticks.timestamp[i : i + 50]],
            }
            assert c.post("/api/v1/process/realtime", json=body).status_code == 200
        page.wait_for_function("() => cards.get('m').t.length === 300", timeout=5_000)
        assert page.evaluate("() => cards.get('m').outcomes.length") <= 500
        # a viewer opens the report through the API; without a key it is refused
        status = page.evaluate(f"""async () => (await fetch('/reports/m.html',
            {{headers: {{Authorization: 'Bearer {viewer}'}}}})).status""")
        assert status == 200 and httpx.get(f"{srv.url}/reports/m.html").status_code == 401
        # the server restarts on the same port: the page reconnects with backoff and goes on
        port = srv.port
        srv.stop()
        page.wait_for_selector("#conn[data-state=reconnecting]", timeout=10_000)
        srv = ThreadServer(home, port=port)
        page.wait_for_selector("#conn[data-state=on]", timeout=20_000)
        last = ticks.iloc[356]
        pid = c.post("/api/v1/process/realtime", json=tick("m", last.timestamp, last.value)).json()[
            "prediction_id"
        ]
        page.wait_for_selector(f'.card[data-source="m"] .last[data-prediction-id="{pid}"]', timeout=2_000)
        assert not errors, errors
    finally:
        srv.stop()


def test_dashboard_says_when_the_key_is_wrong(base, browser, tmp_path):
    home = copy_home(base[0], tmp_path / "nq")
    srv = ThreadServer(home)
    try:
        page, errors = open_page(browser, srv.url, "nq_000000000000_not-a-key")
        page.wait_for_selector("#banner:not([hidden])", timeout=5_000)
        assert "refused (401)" in page.inner_text("#banner")
        assert page.is_visible("#keyform") and not errors
    finally:
        srv.stop()


def test_dashboard_keeps_up_with_20_sources_at_100_per_second(base, browser, tmp_path):
    """20 sources, 100 predictions/s for 5 s: every card shows its source's latest prediction within 2 s of
    the last post, the DOM does not grow with the stream, and no script error."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from nq_dagster.store import Warehouse

    home = copy_home(base[0], tmp_path / "nq")
    wh = Warehouse(home)
    st = wh.load_artifact("serving_state", "m")
    names = [f"d{i:02d}" for i in range(20)]
    for n in names:
        wh.save_artifact(
            "serving_state", n, dataclasses.replace(st, model=dataclasses.replace(st.model, source=n))
        )
    store = KeyStore(home)
    key = store.create("developer", rate="60000/min", burst=1000)[0]
    ticks = base[1]
    srv = ThreadServer(home)
    try:
        page, errors = open_page(browser, srv.url, key)
        page.wait_for_selector("#conn[data-state=on]", timeout=10_000)
        c = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"})
        last = {}

        def post(n: str, i: int) -> str:
            body = tick(n, ticks.timestamp[i], ticks.value[i])
            return c.post("/api/v1/process/realtime", json=body).json()["prediction_id"]

        # a first prediction per card draws its details once (a fixed size); what is measured is whether the
        # page then grows with the stream
        first = {n: post(n, 0) for n in names}
        for n in names:
            page.wait_for_selector(
                f'.card[data-source="{n}"] .last[data-prediction-id="{first[n]}"]', timeout=10_000
            )
        time.sleep(0.3)
        nodes_before = page.evaluate("() => document.getElementsByTagName('*').length")

        # a round's 20 ticks (one per source) posted at once, as 20 clients would: the server batches them, so
        # the load reaches 100 /s on a slow machine too (one request at a time it is the client's latency
        # that is measured, not the dashboard's); each source's ticks stay in order, round after round
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(names)) as pool:
            for i in range(25):  # 25 rounds x 20 sources in 5 s
                for n, pid in zip(names, pool.map(post, names, [i + 1] * len(names)), strict=True):
                    last[n] = pid
                time.sleep(max(0.0, t0 + 0.2 * (i + 1) - time.monotonic()))
        rate = 500 / (time.monotonic() - t0)
        deadline = time.monotonic() + 2.0
        for n in names:
            remaining = max(0.05, deadline - time.monotonic())
            page.wait_for_selector(
                f'.card[data-source="{n}"] .last[data-prediction-id="{last[n]}"]',
                timeout=int(remaining * 1000),
            )
        nodes_after = page.evaluate("() => document.getElementsByTagName('*').length")
        assert rate >= 90, rate
        assert nodes_after <= nodes_before * 1.1 + 200, (nodes_before, nodes_after)
        assert not errors, errors
    finally:
        srv.stop()


def test_dashboard_history_hits_and_misses_alerts_performance_reports_on_a_phone(base, browser, tmp_path):
    """Opened after 40 ticks were served, on a 420 px wide screen: the history is there without a new tick;
    each prediction is marked hit / miss as the server's outcomes say (the newest pending); the accuracy chart
    is the rolling accuracy of those outcomes; the card's banner shows exactly when the report found no skill
    or the live accuracy is significantly below the stated confidence; the performance panel shows the
    server's metrics; the report is a plain link that opens with the key in a cookie; nothing overflows."""
    from scipy.stats import binom

    home = copy_home(base[0], tmp_path / "nq")
    ticks = base[1]
    store = KeyStore(home)
    viewer = store.create("viewer", rate="60000/min", burst=1000)[0]
    dev = store.create("developer", rate="60000/min", burst=1000)[0]
    srv = ThreadServer(home)
    try:
        c = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {dev}"})
        body = {
            "source": "m",
            "data": [float(v) for v in ticks.value[:40]],
            "timestamps": [t.isoformat() for t in ticks.timestamp[:40]],
        }
        assert c.post("/api/v1/process/realtime", json=body).status_code == 200
        outs = c.get("/api/v1/outcomes?source=m").json()["m"]
        recs = c.get("/api/v1/predictions?source=m&limit=8").json()["m"]
        assert len(outs) == 39 and len(recs) == 8
        page = browser.new_context(viewport={"width": 420, "height": 900}).new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.fill("#key", viewer)
        page.click("#keyform button[type=submit]")
        page.wait_for_selector("#conn[data-state=on]", timeout=10_000)
        card = '.card[data-source="m"]'
        page.wait_for_selector(
            f'{card} .last[data-prediction-id="{recs[-1]["prediction_id"]}"]', timeout=3_000
        )
        page.wait_for_timeout(1300)  # the outcome views redraw at most once a second
        marks = dict(
            page.evaluate(
                f"""() => [...document.querySelectorAll('{card} ol.recent li:not(.empty)')]
                .map(li => [li.dataset.predictionId, li.dataset.outcome])"""
            )
        )
        correct = {pd_ts(o["timestamp"]): o["correct"] for o in outs}
        outcome = {True: "hit", False: "miss", None: "pending"}
        want = {r["prediction_id"]: outcome[correct.get(pd_ts(r["timestamp"]))] for r in recs}
        assert marks == want and list(want.values())[-1] == "pending"
        acc = page.evaluate("() => cards.get('m').acc.data[1].at(-1)")
        assert abs(acc - sum(o["correct"] for o in outs[-50:]) / len(outs[-50:])) < 1e-9
        validation = c.get("/api/v1/models").json()["models"]["m"]["validation"]
        k, n = sum(o["correct"] for o in outs), len(outs)
        live_low = n >= 30 and binom.cdf(k, n, sum(o["confidence"] for o in outs) / n) < 0.01
        no_skill = validation is not None and validation["score"] == 0
        assert page.is_visible(f"{card} .skill-banner") == (no_skill or live_low)
        if no_skill:
            assert "No skill" in page.inner_text(f"{card} .skill-banner")
        page.wait_for_selector("#perf:not([hidden]) #perf-total", timeout=8_000)
        metrics = c.get("/api/v1/metrics").json()
        assert page.inner_text("#perf-total") == str(metrics["total_predictions"])
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 420  # nothing overflows
        size = page.evaluate("() => getComputedStyle(document.querySelector('.labels span')).fontSize")
        assert float(size.rstrip("px")) >= 10  # pattern labels a person can read
        # a batch of messages in one (the server may group them) is handled like the messages one by one
        page.evaluate(
            """() => handle({type: 'batch', items: [{type: 'prediction', prediction: {source: 'zz',
            prediction_id: 'z1', timestamp: '2026-01-01T00:00:00Z', direction: 'up', confidence: 0.5,
            value: 1.0}}]})"""
        )
        assert page.evaluate("() => cards.get('zz').last.prediction_id") == "z1"
        href = page.get_attribute(f"{card} a.report", "href")
        assert href == "/reports/m.html"
        report = page.context.new_page()
        resp = report.goto(srv.url + href)
        assert resp.status == 200 and "Validation report" in report.content()  # the cookie carried the key
        assert httpx.get(srv.url + href).status_code == 401  # without it, refused
        assert not errors, errors
    finally:
        srv.stop()


def pd_ts(text: str) -> int:
    import pandas as pd

    return pd.Timestamp(text).value


def test_dashboard_upload_goes_through_the_ingest_rules_with_row_reasons(base, browser, tmp_path):
    """A developer uploads a CSV with one bad value: refused whole with the row, column and fix shown; again
    with "store the good rows": the good rows are stored, the bad one listed. A viewer may not upload."""
    from nq_dagster.store import Warehouse

    home = copy_home(base[0], tmp_path / "nq")
    store = KeyStore(home)
    dev = store.create("developer", rate="60000/min", burst=1000)[0]
    viewer = store.create("viewer", rate="60000/min", burst=1000)[0]
    csv = b"timestamp,value\n2026-05-01T00:00:00Z,1.5\n2026-05-01T00:01:00Z,oops\n2026-05-01T00:02:00Z,1.7\n"
    srv = ThreadServer(home)
    try:
        page, errors = open_page(browser, srv.url, dev)
        page.wait_for_selector("#conn[data-state=on]", timeout=10_000)
        page.click("#upload summary")

        def send(skip: bool) -> str:
            page.set_input_files("#upload-file", {"name": "mine.csv", "mimeType": "text/csv", "buffer": csv})
            page.fill("#upload-source", "uploaded")
            page.set_checked("#upload-skip", skip)
            page.click("#upload-form button[type=submit]")
            page.wait_for_selector("#upload-result .upload-status", timeout=10_000)
            text = page.inner_text("#upload-result")
            page.evaluate("() => document.querySelector('#upload-result').replaceChildren()")
            return text

        refused = send(False)
        assert "quarantined" in refused and "no rows stored" in refused
        assert "oops" in refused and "value" in refused  # the bad row's value and column, with its fix
        assert not Warehouse(home).table_parts("raw_ticks", "uploaded")
        stored = send(True)
        assert "2 rows for uploaded stored" in stored and "oops" in stored
        assert len(Warehouse(home).read_table("raw_ticks", "uploaded")) == 2
        page2, _ = open_page(browser, srv.url, viewer)
        page2.wait_for_selector("#conn[data-state=on]", timeout=10_000)
        page2.click("#upload summary")
        page2.set_input_files("#upload-file", {"name": "x.csv", "mimeType": "text/csv", "buffer": csv})
        page2.fill("#upload-source", "uploaded")
        page2.click("#upload-form button[type=submit]")
        page2.wait_for_selector("#upload-result .upload-status.error", timeout=10_000)
        assert "needs the developer or admin role" in page2.inner_text("#upload-result")
        assert not errors, errors
    finally:
        srv.stop()


def test_dashboard_draws_the_validation_score_per_version_and_the_report_counts_what_was_served(
    base, browser, tmp_path
):
    """Training recorded a point of the validation score's trend; with a second version's point (as a later
    training records it, rejected by the gate) the performance panel draws both, as /api/v1/validation/history
    says, on a 420 px screen. The report opened at its stable URL after 40 served ticks counts them and states
    their live accuracy as the server's realized outcomes give it; 10 ticks later, 50."""
    import re

    from nq_dagster.store import Warehouse
    from nq_dagster.validation import history, promotion

    home = copy_home(base[0], tmp_path / "nq")
    wh = Warehouse(home)
    trained = history.points(wh, "m")
    metrics = wh.read_table("validation_metrics", "m").iloc[-1]
    assert len(trained) == 1 and trained[0]["score"] == metrics["score"]
    assert trained[0]["model_version"] == metrics["model_version"]
    later = {"score": 37.5, "accuracy": 0.61, "predictions": 420, "verdict": "skill"}
    history.record(wh, "m", later, "v-later")
    promotion.record(wh, "m", {"model_version": "v-later", "status": "rejected", "reason": "a test"})
    ticks = base[1]
    store = KeyStore(home)
    viewer = store.create("viewer", rate="60000/min", burst=1000)[0]
    dev = store.create("developer", rate="60000/min", burst=1000)[0]
    srv = ThreadServer(home)
    try:
        c = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {dev}"})
        hist = c.get("/api/v1/validation/history?source=m").json()["m"]
        assert [p["model_version"] for p in hist] == [trained[0]["model_version"], "v-later"]
        assert [p["status"] for p in hist] == ["current", "rejected"] and hist[1]["score"] == 37.5

        def serve(lo: int, hi: int) -> None:
            body = {
                "source": "m",
                "data": [float(v) for v in ticks.value[lo:hi]],
                "timestamps": [t.isoformat() for t in ticks.timestamp[lo:hi]],
            }
            assert c.post("/api/v1/process/realtime", json=body).status_code == 200

        serve(0, 40)
        page = browser.new_context(viewport={"width": 420, "height": 900}).new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.fill("#key", viewer)
        page.click("#keyform button[type=submit]")
        page.wait_for_selector("#perf-validation:not([hidden]) .fig[data-source=m]", timeout=10_000)
        drawn = page.evaluate("() => validation.plot.data.map(a => Array.from(a))")
        m_scores = drawn[1 + page.evaluate("() => validation.sources.indexOf('m')")]
        assert [v for v in m_scores if v is not None] == [p["score"] for p in hist]
        assert drawn[0] == sorted(drawn[0]) and len(drawn[0]) >= 2
        text = page.inner_text("#perf-validation .fig[data-source=m]")
        assert "2 versions" in text and f"(was {hist[0]['score']:.0f})" in text and "rejected" in text
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 420

        def live_line() -> str:
            report = page.context.new_page()  # the link's URL; the key in the dashboard's cookie
            assert report.goto(srv.url + "/reports/m.html").status == 200
            section = report.inner_text("section#live")
            report.close()
            assert "Nothing served live" not in section
            return section

        for served in (40, 50):
            if served == 50:
                serve(40, 50)
            outs = [o for o in c.get("/api/v1/outcomes?source=m").json()["m"] if o["realized"]]
            acc = sum(o["correct"] for o in outs) / len(outs)
            section = live_line()
            got = re.search(
                r"(\d+) predictions served live, (\d+) with a realized outcome: accuracy ([\d.]+)", section
            )
            assert got, section
            assert (int(got[1]), int(got[2])) == (served, len(outs)) and got[3] == f"{acc:.3f}"
            assert "mean stated confidence" in section
        assert not errors, errors
    finally:
        srv.stop()


def test_dashboard_on_an_empty_home_says_what_to_run_first_then_shows_the_first_model(
    base, browser, tmp_path
):
    """A server on a data directory with no model: the page says to train first (`nq demo`, `nq ingest` then
    `nq run`) instead of an empty page. When a model is trained (here: copied in, as training writes it), its
    card appears without a reload and streams what is posted."""
    from nq_dagster.store import Warehouse

    home = tmp_path / "nq"
    Warehouse(home).ensure()
    key = KeyStore(home).create("developer", rate="60000/min", burst=1000)[0]
    srv = ThreadServer(home)
    try:
        page, errors = open_page(browser, srv.url, key)
        page.wait_for_selector("#empty:not([hidden])", timeout=10_000)
        text = page.inner_text("#empty")
        assert "nq demo" in text and "nq ingest" in text and "nq run" in text
        trained = Warehouse(base[0])
        st = trained.load_artifact("serving_state", "m")
        wh = Warehouse(home)
        wh.write_table("raw_ticks", "m", trained.read_table("raw_ticks", "m"), part="part-copy")
        wh.save_artifact("serving_state", "m", st)
        page.wait_for_selector('.card[data-source="m"]', timeout=20_000)
        assert page.is_hidden("#empty")
        page.wait_for_selector("#conn[data-state=on]", timeout=10_000)
        c = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"})
        t = base[1].iloc[0]
        deadline = time.monotonic() + 20
        while True:  # the watcher loads the model within its interval
            r = c.post("/api/v1/process/realtime", json=tick("m", t.timestamp, t.value))
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        pid = r.json()["prediction_id"]
        page.wait_for_selector(f'.card[data-source="m"] .last[data-prediction-id="{pid}"]', timeout=5_000)
        assert not errors, errors
    finally:
        srv.stop()
