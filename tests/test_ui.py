"""The MLflow UI, checked in a real browser: Debian's headless chromium driven by Selenium.

A two-point sweep of a few training steps logs to a real `mlflow server` on loopback.
The test then looks at what a user would: a point's run page (the training metrics
with their logged values), its clip artifacts (the GIF decodes; the MP4's <video>
loads and plays), the runs table sorted by loss_G with the sweep's parent run, and
the compare view of both points, the experiment's view, and the sweep's compare clip on its
parent run. Screenshots go to $T2V_TEST_ARTIFACTS (default
test-artifacts/ in the repo root).

URLs of MLflow 3.17's single-page UI, checked against a running server (each with
?workflowType=machine_learning, the model-training view: pipeline/tracking.py ui_url):
  #/experiments/<exp>/runs/<run>                    run overview: metrics, params, tags
  #/experiments/<exp>/runs/<run>/artifacts/<path>   artifact view: <img> for a GIF, <video> for an MP4
  #/experiments/<exp>/runs?workflowType=machine_learning&orderByKey=metrics.`loss_G`&orderByAsc=true
  #/compare-runs?runs=["<run>","<run>"]&experiments=["<exp>"]
"""

import json
import os
import urllib.parse
from pathlib import Path

import av
import pytest
from mlflow.tracking import MlflowClient

from conftest import t2v
from pipeline.tracking import UI_VIEW
from test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver
WAIT_S = 90  # the SPA's first load on a busy 2-core machine
TRAIN_METRICS = ("loss_G", "loss_D", "gp_img", "gp_vid", "d_real", "d_fake", "samples_per_s", "sec_per_step")

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def artifacts_dir() -> Path:
    d = Path(os.environ.get("T2V_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def shots() -> Path:
    return artifacts_dir()


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("T2V_NO_BROWSER"):
        pytest.skip(f"T2V_NO_BROWSER is set: {os.environ['T2V_NO_BROWSER']}")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run `make setup` (or `make test`), which apt-installs "
                    "Debian's chromium and chromium-driver; set T2V_NO_BROWSER=<reason> to skip this test instead")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # chromium refuses to start as root with its sandbox on
    # The driver's path is given, so Selenium Manager never runs (it would try to download one).
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    d.set_script_timeout(30)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def sweep(prepared, mlflow_server, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ui") / "sw"
    # Both points train at once on 2 cores: one thread each, or they oversubscribe and crawl.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
        "--preset", "debug_cpu", "--max-steps", "2", *sum((["--set", s] for s in TINY), []),
        "--sweep", "lr_g=1e-4,2e-4", "--tracking-uri", mlflow_server, "--experiment", "t2v-ui", env=env)
    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("t2v-ui").experiment_id
    parent = (run_dir / "mlflow_run_id").read_text().strip()
    points = {r.info.run_name: r for r in c.search_runs([exp], filter_string="tags.`t2v.sweep` = 'sw'")
              if r.info.run_id != parent}
    assert sorted(points) == ["lr_g-1e-4", "lr_g-2e-4"]
    return {"uri": mlflow_server, "ui": mlflow_server, "exp": exp, "parent": parent, "points": points,
            "dir": run_dir}


def open_page(d, url: str, *texts: str) -> str:
    """Load a UI page and wait until every text is visible on it; returns the page's text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    d.get(url)
    try:
        WebDriverWait(d, WAIT_S).until(lambda d: all(t in d.find_element("tag name", "body").text for t in texts))
    except TimeoutException:
        d.save_screenshot(str(artifacts_dir() / "failed.png"))
        raise AssertionError(f"{url}: not all of {texts} appeared in {WAIT_S}s; page text:\n"
                             + d.find_element("tag name", "body").text[:3000])
    return d.find_element("tag name", "body").text


def wait_js(d, script: str, what: str):
    """Poll a JS expression until it returns something truthy."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(d, WAIT_S).until(lambda d: d.execute_script(script))
    except TimeoutException:
        d.save_screenshot(str(artifacts_dir() / "failed.png"))
        raise AssertionError(f"{what} did not happen in {WAIT_S}s at {d.current_url}") from None


def close_assistant(d) -> None:
    """MLflow 3's assistant panel opens itself on the first visit and covers a third of every
    screenshot; close it (the UI remembers). Cosmetic only: nothing is asserted about it."""
    for b in d.find_elements("css selector", 'button[aria-label="Close"]'):
        if b.is_displayed():
            b.click()


def clip_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as f:
        s = f.streams.video[0]
        return s.width, s.height


def test_run_page_shows_metrics_and_playable_clips(browser, sweep, shots):
    d, base, exp = browser, sweep["ui"], sweep["exp"]
    run = sweep["points"]["lr_g-1e-4"]
    rid = run.info.run_id
    clips = sweep["dir"] / "lr_g-1e-4" / "clips"

    # Overview: every training metric, with the value training logged last.
    text = open_page(d, f"{base}/#/experiments/{exp}/runs/{rid}?{UI_VIEW}", "lr_g-1e-4", *TRAIN_METRICS)
    close_assistant(d)
    for key in ("loss_G", "loss_D"):
        assert repr(run.data.metrics[key]) in text, (key, run.data.metrics[key])
    assert "t2v.sweep" in text and "0.0001" in text  # the sweep tag and the swept param
    d.save_screenshot(str(shots / "mlflow_run.png"))

    # The GIF in the artifact view: listed, and decoded by the browser at its real size.
    open_page(d, f"{base}/#/experiments/{exp}/runs/{rid}/artifacts/clips/step_000002.gif?{UI_VIEW}",
              "clips/step_000002.gif", "step_000002.mp4", "prompts.json")
    size = wait_js(d, """
        const im = Array.from(document.images).find(i => !i.src.startsWith('data:') && i.complete && i.naturalWidth > 0);
        return im ? [im.naturalWidth, im.naturalHeight] : null;""", "the GIF rendering")
    assert tuple(size) == clip_size(clips / "step_000002.gif")
    d.save_screenshot(str(shots / "mlflow_clip_gif.png"))

    # The MP4, picked in the artifact tree (the viewer reads the URL's artifact path only when
    # it first mounts). MLflow 3.17 shows it in a <video>: it must load without error and play.
    d.find_element("xpath", '//*[normalize-space(text())="step_000002.mp4"]').click()
    wait_js(d, "return document.body.innerText.includes('clips/step_000002.mp4')", "selecting the MP4")
    state = wait_js(d, """
        const v = document.querySelector('video');
        return v && (v.readyState >= 2 || v.error) ?
            {ready: v.readyState, error: v.error && [v.error.code, v.error.message], w: v.videoWidth,
             h: v.videoHeight, duration: v.duration} : null;""", "the <video> loading")
    assert state["error"] is None, state
    assert (state["w"], state["h"]) == clip_size(clips / "step_000002.mp4")
    assert state["duration"] == pytest.approx(2.0, abs=0.1)  # 16 frames at 8 fps
    played = d.execute_async_script("""
        const done = arguments[arguments.length - 1], v = document.querySelector('video');
        v.muted = true;
        v.play().then(() => setTimeout(() => done({t: v.currentTime, error: v.error && v.error.code}), 700),
                      e => done({failed: String(e)}));""")
    assert "failed" not in played and played["error"] is None and played["t"] > 0, played
    d.save_screenshot(str(shots / "mlflow_clip_mp4.png"))


def test_runs_table_sorts_by_loss_and_compare_view_shows_both_points(browser, sweep, shots):
    d, base, exp = browser, sweep["ui"], sweep["exp"]
    points = sweep["points"]

    # The runs table ("Model training" view), sorted by loss_G: the points in that order, and the parent.
    order = "&orderByKey=" + urllib.parse.quote("metrics.`loss_G`") + "&orderByAsc=true"
    text = open_page(d, f"{base}/#/experiments/{exp}/runs?{UI_VIEW}{order}",
                     "Sort: loss_G", "lr_g-1e-4", "lr_g-2e-4", "3 matching runs")
    close_assistant(d)
    by_loss = sorted(points, key=lambda n: points[n].data.metrics["loss_G"])
    assert text.index(by_loss[0]) < text.index(by_loss[1]), (by_loss, text[:1500])
    assert "\nsw\n" in text  # the sweep's parent run groups them
    d.save_screenshot(str(shots / "mlflow_runs_by_loss.png"))

    # The compare view of both points: the swept param differs, the metrics are side by side.
    ids = [points[n].info.run_id for n in ("lr_g-1e-4", "lr_g-2e-4")]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp])})
    text = open_page(d, f"{base}/#/compare-runs?{query}&{UI_VIEW}", "Comparing 2 Runs", *ids, "Parameters", "Metrics")
    assert "lr_g 0.0001 0.0002" in text  # one row: param name, then each run's value
    for key in ("loss_G", "loss_D", "d_real", "d_fake"):
        assert f"\n{key}\n" in text
    d.set_window_size(1400, 2400)  # the plot, the run details and the param table in one picture
    d.save_screenshot(str(shots / "mlflow_compare.png"))
    d.set_window_size(1400, 1000)


def test_experiment_opens_in_the_model_training_view(browser, sweep, shots):
    """The experiment carries MLflow's kind tag for model training, and the address the pipeline
    prints (tracking.ui_url) opens the runs table in that view, not the GenAI one."""
    from pipeline.tracking import ui_url

    d, base, exp = browser, sweep["ui"], sweep["exp"]
    assert MlflowClient(sweep["uri"]).get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    text = open_page(d, ui_url(base, exp), "sw", "3 matching runs", "Model registry")
    close_assistant(d)
    assert "Evaluation runs" not in text and "Evaluations" not in text, text[:1500]
    assert "/runs" in d.current_url and "workflowType=machine_learning" in d.current_url
    d.save_screenshot(str(shots / "mlflow_experiment_view.png"))


def test_parent_run_shows_the_sweep_compare_clip(browser, sweep, shots):
    d, base, exp = browser, sweep["ui"], sweep["exp"]
    parent = sweep["parent"]
    compare = sweep["dir"] / "compare"
    c = MlflowClient(sweep["uri"])
    arts = {a.path for a in c.list_artifacts(parent, "compare")}
    assert {"compare/step_000002.gif", "compare/step_000002.mp4", "compare/summary.csv"} <= arts, arts
    open_page(d, f"{base}/#/experiments/{exp}/runs/{parent}/artifacts/compare/step_000002.gif?{UI_VIEW}",
              "compare/step_000002.gif", "summary.csv")
    close_assistant(d)
    size = wait_js(d, """
        const im = Array.from(document.images).find(i => !i.src.startsWith('data:') && i.complete && i.naturalWidth > 0);
        return im ? [im.naturalWidth, im.naturalHeight] : null;""", "the compare GIF rendering")
    assert tuple(size) == clip_size(compare / "step_000002.gif")
    d.save_screenshot(str(shots / "mlflow_sweep_compare.png"))


def test_a_chain_server_opens_only_with_its_owners_password(browser, tmp_path, shots):
    """The pipeline's own server (basic-auth): without the password the browser gets no UI; a client
    with the user and password from tracking/credentials.json reads the experiment."""
    from pipeline.tracking import prepare_store, ui_url
    from pipeline.tracking_server import LocalServer, credentials, exported

    d = browser
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    exp = prepare_store(uri, "owned")
    with LocalServer(uri, tmp_path / "tracking") as server:
        d.get(ui_url(server.uri, exp))
        text = d.find_element("tag name", "body").text
        assert "Model training" not in text and "owned" not in text, text[:500]
        d.save_screenshot(str(shots / "mlflow_server_without_password.png"))
        # The owner's client, with the credentials in its environment, reads the same experiment.
        with exported(credentials(tmp_path / "tracking")):
            assert MlflowClient(server.uri).get_experiment(exp).name == "owned"
