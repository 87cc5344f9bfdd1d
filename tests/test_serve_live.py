"""The service as a real process on 127.0.0.1: a bounded burst of concurrent requests, a burst of
malformed uploads, SIGTERM without losing an enrolment, and the web page in headless Chromium."""

import asyncio
import io
import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")

from live import FACES, HOST, KEY, Server, burst, png  # noqa: E402

from facenet.gallery import Gallery  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_file):
    # the nearest-face policy (through `facenet serve --policy`): an enrolled photo is at 0 from its person
    srv = Server(
        tmp_path_factory.mktemp("server"),
        model_file,
        extra=("--policy", "nearest", "--workers", "2", "--time-budget", "60"),
    )
    try:
        yield srv
    finally:
        assert srv.stop() in (0, -signal.SIGTERM) and "Traceback" not in srv.log.read_text(), srv.log.read_text()


def test_concurrent_burst_has_no_server_errors(server):
    enrol = httpx.post(
        server.url + "/api/people",
        data={"name": "Ann"},
        headers={"X-API-Key": KEY},
        files=[("photos", ("a.png", png(0, 0), "image/png"))],
        timeout=30,
    )
    assert enrol.status_code == 201, enrol.text
    photos = [png(i % 8, i // 8) for i in range(16)]
    requests = []
    for i in range(60):
        a, b = photos[i % 16], photos[(i * 7 + 3) % 16]
        if i % 2:
            requests.append(
                dict(
                    method="POST",
                    url="/api/verify",
                    files={"a": ("a.png", a, "image/png"), "b": ("b.png", b, "image/png")},
                )
            )
        else:
            requests.append(
                dict(
                    method="POST",
                    url="/api/identify",
                    headers={"X-API-Key": KEY},
                    files={"photo": ("q.png", a, "image/png")},
                )
            )
    results = asyncio.run(burst(server.url, requests))
    statuses = [s for s, _ in results]
    assert statuses == [200] * len(requests), sorted(set(statuses))
    latency = np.array([t for _, t in results]) * 1000
    print(
        f"\n{len(requests)} requests at 8 in flight: p50 {np.percentile(latency, 50):.1f} ms, "
        f"p99 {np.percentile(latency, 99):.1f} ms"
    )


def test_healthz_answers_while_heavy_requests_run(server):
    """20 requests of a 12 MP photo each (decoded whole: the server runs with --no-detect) keep the pool busy
    for seconds; /healthz still answers within a second, since the event loop does no photo work."""
    x = np.linspace(0, 255, 4000, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(x[None, :], x[:3000, None], np.uint8(128)), axis=-1)
    big = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(big, "JPEG", quality=80)
    heavy = dict(method="POST", url="/api/embed", files={"photos": ("big.jpg", big.getvalue(), "image/jpeg")})

    async def load_and_probe():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            work = [asyncio.create_task(client.request(**heavy)) for _ in range(20)]
            await asyncio.sleep(0.5)  # the uploads are in and the pool is busy
            start = asyncio.get_running_loop().time()
            health = await client.get("/healthz", timeout=10)
            waited = asyncio.get_running_loop().time() - start
            still_running = sum(not t.done() for t in work)
            return health.status_code, waited, still_running, [r.status_code for r in await asyncio.gather(*work)]

    status, waited, still_running, statuses = asyncio.run(load_and_probe())
    assert status == 200 and still_running > 0, (status, still_running)
    assert waited < 1.0, f"/healthz took {waited:.2f} s while heavy requests ran"
    assert statuses == [200] * 20, statuses


def test_malformed_burst_is_all_4xx_and_server_stays_healthy(server):
    jpeg = io.BytesIO()
    Image.fromarray(FACES.render(1, 1)).save(jpeg, "JPEG")
    bomb = _png_claiming(100_000, 100_000)
    big = _png_claiming(10_000, 10_000)  # over Pillow's own warning limit and the server's: 413, nothing logged
    uploads = [
        ("t.jpg", jpeg.getvalue()[:400], "image/jpeg"),
        ("bomb.png", bomb, "image/png"),
        ("big.png", big, "image/png"),
        ("x.txt", b"hello", "text/plain"),
        ("e.png", b"", "image/png"),
        ("r.png", os.urandom(3000), "image/png"),
    ]
    requests = []
    for i in range(40):
        name, data, kind = uploads[i % len(uploads)]
        requests.append(
            dict(method="POST", url="/api/identify", headers={"X-API-Key": KEY}, files={"photo": (name, data, kind)})
        )
    requests += [
        dict(method="POST", url="/api/verify", content=b""),  # empty body, no multipart
        dict(method="POST", url="/api/verify", json={"a": 1}),
        dict(method="POST", url="/api/people", files={"photos": ("a.png", png(0, 0), "image/png")}),
    ]
    statuses = [s for s, _ in asyncio.run(burst(server.url, requests))]
    assert all(400 <= s < 500 for s in statuses), statuses
    assert {400, 401, 413, 415} <= set(statuses)
    # a declared 11 MiB body is refused from its headers, before a byte of it is sent
    with socket.create_connection((HOST, server.port), timeout=10) as conn:
        conn.sendall(
            b"POST /api/identify HTTP/1.1\r\nHost: x\r\nContent-Length: 11534336\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
        )
        assert conn.recv(4096).startswith(b"HTTP/1.1 413 ")
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    assert "DecompressionBomb" not in server.log.read_text()  # the server's own pixel limit answered
    ok = httpx.post(
        server.url + "/api/verify",
        timeout=30,
        files={"a": ("a.png", png(2, 0), "image/png"), "b": ("b.png", png(2, 1), "image/png")},
    )
    assert ok.status_code == 200


def test_sigterm_keeps_committed_enrolments(tmp_path, model_file):
    srv = Server(tmp_path, model_file, env_key=True)
    try:
        files = [("photos", (f"z{i}.png", png(3, i), "image/png")) for i in range(2)]
        r = httpx.post(
            srv.url + "/api/people", data={"name": "Zoë"}, files=files, headers={"X-API-Key": KEY}, timeout=30
        )
        assert r.status_code == 201, r.text
    finally:
        code = srv.stop()
    assert code in (0, -signal.SIGTERM) and "Traceback" not in srv.log.read_text(), srv.log.read_text()
    with Gallery.open(srv.gallery, create=False) as g:
        assert [(p.name, p.faces) for p in g.people()] == [("Zoë", 2)]
    assert (srv.gallery.stat().st_mode & 0o777) == 0o600


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- the web page in a real browser -------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not CHROMIUM or not Path(CHROMEDRIVER).exists():
        pytest.skip(
            "headless browser test needs the Debian packages chromium and chromium-driver "
            "(apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1500",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no Selenium Manager download
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_web_page_verify_enrol_identify_remove(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    files = {}
    for name, (i, j) in {"a": (4, 0), "b": (4, 1), "c": (5, 0)}.items():
        files[name] = tmp_path / f"{name}.png"
        files[name].write_bytes(png(i, j))
    wait = WebDriverWait(browser, 30)
    browser.get(server.url + "/")
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("ready"))
    model = httpx.get(server.url + "/api/model", timeout=30).json()
    assert f"model {model['name']}" in browser.find_element(By.ID, "status").text  # the page says who answers

    # verify: both photos drawn with their face box, distance and decision shown
    browser.find_element(By.ID, "verify-a").send_keys(str(files["a"]))
    browser.find_element(By.ID, "verify-b").send_keys(str(files["b"]))
    browser.find_element(By.ID, "verify-go").click()
    wait.until(lambda d: "distance" in d.find_element(By.ID, "verify-result").text)
    verdict = browser.find_element(By.ID, "verify-result").text
    expected = httpx.post(
        server.url + "/api/verify",
        timeout=30,
        files={
            "a": ("a.png", files["a"].read_bytes(), "image/png"),
            "b": ("b.png", files["b"].read_bytes(), "image/png"),
        },
    ).json()
    assert f"distance {expected['distance']:.3f}" in verdict
    assert ("SAME" in verdict) == expected["same"]
    for side in "ab":
        canvas = browser.find_element(By.ID, f"verify-canvas-{side}")
        assert canvas.get_attribute("data-faces") == "1" and int(canvas.get_attribute("width")) > 0
    assert not browser.find_elements(By.CSS_SELECTOR, "#verify-notes li")  # 64 px crops: nothing unreliable
    # a failed comparison leaves no preview of the earlier photos
    files["text"] = tmp_path / "notes.png"
    files["text"].write_text("not a photo")
    browser.find_element(By.ID, "verify-b").send_keys(str(files["text"]))
    browser.find_element(By.ID, "verify-go").click()
    wait.until(lambda d: "error" in d.find_element(By.ID, "verify-result").get_attribute("class"))
    for side in "ab":
        canvas = browser.find_element(By.ID, f"verify-canvas-{side}")
        assert canvas.get_attribute("width") == "0" and canvas.get_attribute("data-faces") is None

    # without a key the gallery stays closed: the server's message says where the key goes, nothing is added
    wait.until(lambda d: "Key field" in d.find_element(By.ID, "people-result").text)
    browser.find_element(By.ID, "enrol-name").send_keys("Page Person")
    browser.find_element(By.ID, "enrol-photos").send_keys(f"{files['a']}\n{files['b']}")
    browser.find_element(By.ID, "enrol-go").click()
    wait.until(lambda d: "changes the gallery" in d.find_element(By.ID, "gallery-result").text)
    # with the key: the person appears in the table
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "enrol-go").click()
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#people tr[data-name='Page Person']")))
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "2"

    # identify: an enrolled photo finds its person first; its one face is listed with its place
    browser.find_element(By.ID, "identify-photo").send_keys(str(files["a"]))
    browser.find_element(By.ID, "identify-go").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#identify-faces .matches li"))
    assert browser.find_element(By.ID, "identify-result").text == f"Best match: Page Person (model {model['name']})"
    face = browser.find_element(By.CSS_SELECTOR, "#identify-faces li[data-face='1'] .face").text
    assert face == "Face 1 at 0, 0 (64×64 px): Page Person"
    first = browser.find_elements(By.CSS_SELECTOR, "#identify-faces .matches li")[0].text
    assert first.startswith("Page Person — distance 0.000")
    assert not browser.find_elements(By.CSS_SELECTOR, "#identify-faces .notes li")  # nothing unreliable
    assert httpx.get(server.url + "/api/people", headers={"X-API-Key": KEY}, timeout=30).json()["policy"] == "nearest"
    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] > 0
    if os.environ.get("FACENET_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["FACENET_SCREENSHOT"])

    # the key stays for this tab: after a reload the gallery is listed again
    browser.refresh()
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#people tr[data-name='Page Person']")))
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == KEY

    # remove (after the confirmation dialog): the row goes away
    row.find_element(By.CSS_SELECTOR, "button.remove").click()
    wait.until(ec.alert_is_present()).accept()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#people tr[data-name='Page Person']"))
    assert "Removed Page Person (2 faces)" in browser.find_element(By.ID, "gallery-result").text
    logged = browser.get_log("browser")
    assert not [e for e in logged if e.get("source") == "javascript"]  # no script errors
    assert not [e for e in logged if "favicon" in e.get("message", "")]  # the icon is there


def test_api_docs_render_every_operation(server, browser):
    """/docs in a real browser: Swagger UI reads the OpenAPI 3.1 document and lists the operations."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    listed = {
        (e.get_attribute("data-path") or e.text).replace("\u200b", "")
        for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {
        "/api/verify",
        "/api/embed",
        "/api/identify",
        "/api/cluster",
        "/api/people",
        "/api/people/{name}",
        "/api/model",
        "/healthz",
        "/readyz",
    } <= listed, listed
    assert "Unable to render" not in browser.page_source
