"""The Prometheus endpoint and the read-only dashboard, served by the real daemon (SIMULATED GPUs).
The dashboard is checked in a real headless browser: Debian's chromium driven by selenium."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GATED = "while [ ! -e go ]; do sleep 0.05; done"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon_with(make_daemon, open_tmp: Path, settings: str):
    home = open_tmp / f"home-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    (home / "config.toml").write_text("[daemon]\n" + settings)
    return make_daemon("--simulate-gpus", "2x24GiB", "--grace", "1s", "--node", f"web-{uuid.uuid4().hex[:8]}",
                       home=home)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")) or (want and line.startswith(name + "{") and
                                                                          all(f'{k}="{v}"' in line for k, v in labels.items())):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_prometheus_metrics(open_tmp, make_daemon):  # open_tmp (the home's parent) outlives the daemon
    port = _free_port()
    d = _daemon_with(make_daemon, open_tmp, f"metrics_port = {port}\n")
    url = f"http://127.0.0.1:{port}/metrics"
    run = d.submit("--gpu-mem", "10GiB", "--", "sh", "-c", GATED, cwd=open_tmp)
    d.wait_state(run, "running")
    wait = d.submit("--gpus", "2", "--", "true", cwd=open_tmp)
    deadline = time.monotonic() + 20
    while True:
        status, text = _get(url)
        assert status == 200, text
        gpu = d.job(run)["placement"]["gpu_indices"][0]
        node = d.job(run)["placement"]["node"]
        if _metric(text, "gpuq_dispatch_latency_seconds_count") == 1.0:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.3)
    assert _metric(text, "gpuq_jobs", state="running", user="root") == 1
    assert _metric(text, "gpuq_jobs", state="pending", user="root") == 1
    assert _metric(text, "gpuq_gpu_memory_reserved_bytes", node=node, gpu=str(gpu)) == 10 * 1024**3
    assert _metric(text, "gpuq_gpu_memory_reserved_bytes", node=node, gpu=str(1 - gpu)) == 0
    assert _metric(text, "gpuq_gpu_memory_total_bytes", node=node, gpu="0") == 24 * 1024**3
    assert _metric(text, "gpuq_gpu_memory_used_bytes", node=node, gpu=str(gpu)) is not None
    assert _metric(text, "gpuq_wait_seconds_count") == 1.0
    assert "gpuq_wait_seconds_bucket" in text and "gpuq_user_usage_gpu_seconds" in text
    (open_tmp / "go").touch()
    d.wait_state(run, "completed")
    d.wait_state(wait, "completed")
    status, text = _get(url)
    assert _metric(text, "gpuq_user_usage_gpu_seconds", user="root") > 0
    # bound to localhost only by default
    with socket.socket() as s:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            assert s.connect_ex((addr, port)) != 0


def test_dashboard_in_a_headless_browser(open_tmp, make_daemon):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_exe is None:
        pytest.fail("apt-get install chromium chromium-driver: the dashboard test needs a real browser")
    port = _free_port()
    d = _daemon_with(make_daemon, open_tmp, f"dashboard_port = {port}\n")
    secret = "SECRET_TOKEN_VALUE"
    job = d.submit("--gpu-mem", "4GiB", "--name", "train-resnet", "--", "sh", "-c", GATED, cwd=open_tmp,
                   env={"API_TOKEN": secret})
    placed = d.wait_state(job, "running")
    gpu, node = placed["placement"]["gpu_indices"][0], placed["placement"]["node"]
    blocked = d.submit("--gpus", "2", "--name", "needs-two<b>x</b>", "--", "true", cwd=open_tmp)
    from gpuq.store import Store
    from gpuq import keys

    store = Store.from_url(f"unix://{d.home}/redis/redis.sock")
    store.r.hset(keys.GPU_HOLDS, "garbage", "{not json")  # garbage in the store must not break the page
    store.r.hset(keys.GPU_HOLDS, "wrong", '{"job": "x", "gpus": "all"}')

    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    browser = webdriver.Chrome(service=Service(driver_exe), options=opts)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30, poll_frequency=0.2)
        cell = f'.gpu[data-node="{node}"][data-gpu="{gpu}"] li[data-job="{job}"]'
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, cell))
        text = browser.find_element(By.CSS_SELECTOR, cell).text
        assert f"job {job}" in text and "root" in text and "train-resnet" in text, text
        other = f'.gpu[data-node="{node}"][data-gpu="{1 - gpu}"] li[data-job="{job}"]'
        assert not browser.find_elements(By.CSS_SELECTOR, other)  # on the right GPU only
        row = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#queue tr[data-job="{blocked}"]'))[0]
        wait.until(lambda b: "GPU" in b.find_element(By.CSS_SELECTOR, f'#queue tr[data-job="{blocked}"] .reason').text)
        assert "needs-two<b>x</b>" in row.text  # a user's text is shown as text, never parsed as HTML
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#usage tr[data-user="root"]'))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#timeline rect[data-job="{job}"][data-gpu="{gpu}"]'))
        assert secret not in browser.page_source and "API_TOKEN" not in browser.page_source  # no environments

        (open_tmp / "go").touch()  # the job ends: the page follows by itself
        wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, cell))
        wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, f'#queue tr[data-job="{blocked}"]'))
        assert browser.find_elements(By.CSS_SELECTOR, f'#timeline rect[data-job="{job}"]')  # still in the timeline
    finally:
        browser.quit()
    status, _ = _post(f"http://127.0.0.1:{port}/api/dashboard.json")
    assert status == 405  # read-only


def _post(url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
