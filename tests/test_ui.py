"""The browser page at ``/ui`` (service/http/ui.py) in a real Chromium, against a real ``bentoml serve``.

Chromium is Debian's (``apt-get install chromium chromium-driver``; ``.ci/run`` installs it),
driven by Selenium through the system chromedriver: nothing is downloaded. Without Chromium,
chromedriver or Selenium the browser tests skip; the HTTP checks of the page (OpenAPI info, the
page under an API key) run anyway.

The page must show, for real photos, exactly the labels ``POST /classify`` answers for the same
files, the API's reason next to a bad file, ask for the API key once per tab, work by keyboard and
at phone width, and never fetch anything but the server (Chrome's network log is checked).

``python tests/test_ui.py --screenshot docs/ui.png`` takes the README's screenshot the same way,
against the default model (models/imagenette) and real photos.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
import service_files as files
from helpers import Server, expect, server_env

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
API_KEY = "ui-test-key-5f2c"
PHONE_WIDTH = 375
WAIT_S = 90


# --------------------------------------------------------------------------------- browser


def chromium(width: int = 1000, height: int = 900):
    """A headless Debian Chromium under Selenium, with its network log on (see ``requested``)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        *CHROMIUM_FLAGS,
        f"--window-size={width},{height}",
        f"--user-data-dir={tempfile.mkdtemp(prefix='convzoo-chromium-')}",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def requested(driver) -> list[str]:
    """The URLs the browser requested since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_errors(driver) -> list[str]:
    """SEVERE console messages since the last call (script errors, Content-Security-Policy
    violations), except Chrome's note on each HTTP error status (the page expects those)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE"
        and "Failed to load resource: the server responded with a status of" not in entry["message"]
    ]


def wait_for(driver, condition, message: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message)


def open_page(driver, server: Server) -> None:
    driver.get(f"{server.url}/ui/")
    wait_for(
        driver,
        lambda d: d.execute_script("return document.readyState") == "complete",
        "the page did not load",
    )


def model_facts(driver) -> dict[str, str]:
    return driver.execute_script("""
        const facts = {};
        for (const dd of document.querySelectorAll('[data-fact]')) facts[dd.dataset.fact] = dd.textContent;
        return facts;""")


def upload(driver, paths: list[Path]) -> list[dict]:
    """Pick ``paths`` in the page's file input; wait until every new card is settled; return the
    cards (newest first) as ``{file, state, message, classes: [(label, percent)], timing}``."""
    before = len(cards(driver))
    driver.find_element("id", "file-input").send_keys("\n".join(str(p) for p in paths))
    wait_for(
        driver,
        lambda d: (
            len(cards(d)) == before + len(paths) and all(c["state"] in ("done", "error") for c in cards(d))
        ),
        f"the page did not settle on {len(paths)} uploads",
    )
    return cards(driver)[: len(paths)]


def cards(driver) -> list[dict]:
    return driver.execute_script("""
        return [...document.querySelectorAll('#results > .card')].map(card => ({
            file: card.dataset.file, state: card.dataset.state,
            message: card.querySelector('.message').textContent,
            timing: card.querySelector('.timing').textContent,
            classes: [...card.querySelectorAll('.class')].map(row =>
                [row.querySelector('.label').textContent, row.querySelector('.score').textContent]),
        }));""")


def shown(answer: dict) -> list[list[str]]:
    """How the page shows one ``/classify`` answer: ``[label, "93.1 %"]`` per class."""
    return [[entry["label"], f"{entry['score'] * 100:.1f} %"] for entry in answer["top_k"]]


def same_classes(page: list[list[str]], answer: dict) -> bool:
    """Same labels in the same order; percentages within 0.1 (float noise across batch sizes)."""
    expected = shown(answer)
    return [label for label, _ in page] == [label for label, _ in expected] and all(
        abs(float(a.split()[0]) - float(b.split()[0])) <= 0.1001
        for (_, a), (_, b) in zip(page, expected, strict=True)
    )


# -------------------------------------------------------------------------------- fixtures


def start_server(exported_model, bentoml_home, log: Path, **settings: str) -> Server:
    return Server.started([], {**server_env(exported_model, bentoml_home), **settings}, log)


@pytest.fixture(scope="module")
def server(exported_model, bentoml_home, tmp_path_factory):
    server = start_server(exported_model, bentoml_home, tmp_path_factory.mktemp("logs") / "ui_serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_server(exported_model, bentoml_home, tmp_path_factory):
    server = start_server(
        exported_model,
        bentoml_home,
        tmp_path_factory.mktemp("logs") / "ui_keyed_serve.log",
        CONVZOO_API_KEY=API_KEY,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium and chromedriver (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def photos(shared_imagenette) -> list[Path]:
    """Three real photos, one from each of the first three Imagenette classes."""
    folders = sorted(p for p in shared_imagenette.iterdir() if p.is_dir())[:3]
    return [sorted(folder.glob("*.JPEG"))[0] for folder in folders]


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("uploads") / "notes.jpg"
    path.write_bytes(files.refused_files()["notes.jpg"][0])
    return path


def classify(server: Server, paths: list[Path], **headers: str) -> list[dict]:
    parts = [("images", (p.name, p.read_bytes())) for p in paths]
    return expect(
        requests.post(f"{server.url}/classify", files=parts, headers=headers, timeout=120), 200, server
    )


# ------------------------------------------------------------------ the service (no browser)


def test_openapi_info_describes_convzoo(server):
    info = expect(requests.get(f"{server.url}/docs.json", timeout=30), 200, server)["info"]
    assert info["title"] == "convzoo image classifier"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*|dev", info["version"])
    description = info["description"]
    assert "servicetest:1" in description and "lenet5" in description
    assert "curl -F images=@photo.jpg" in description and "(./ui/)" in description
    assert "BentoML" not in description and "contact" not in info
    assert "API key" not in description


def test_the_landing_page_is_convzoos_and_offline(server, browser):
    """``/``: convzoo's API page (BentoML's local Swagger UI assets, no tag manager from the
    internet), titled and linking to the page; Swagger renders the OpenAPI title from it."""
    answer = requests.get(f"{server.url}/", timeout=30)
    assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]
    assert "<title>convzoo image classifier — HTTP API</title>" in answer.text
    assert "googletagmanager" not in answer.text and "https://" not in answer.text
    assert 'href="./ui/"' in answer.text
    browser.get(f"{server.url}/")
    wait_for(
        browser,
        lambda d: "convzoo image classifier" in d.find_element("id", "swagger-ui").text,
        "Swagger UI did not render the OpenAPI title",
    )


def test_page_and_its_files_are_served_with_a_strict_policy(server):
    page = requests.get(f"{server.url}/ui", timeout=30)  # redirected to /ui/
    assert page.status_code == 200 and page.url.endswith("/ui/")
    assert "text/html" in page.headers["content-type"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name in ("ui.js", "ui.css"):
        assert requests.get(f"{server.url}/ui/{name}", timeout=30).status_code == 200
    # nothing in the page's files points outside the server
    for path in sorted((REPO / "service" / "static").iterdir()):
        assert not re.search(r"(?:https?:)?//[a-z]", path.read_text()), path.name
    assert requests.get(f"{server.url}/ui/missing.js", timeout=30).status_code == 404


def test_page_is_open_but_the_api_is_not_under_a_key(keyed_server):
    url = keyed_server.url
    assert requests.get(f"{url}/ui/", timeout=30).status_code == 200
    assert requests.get(f"{url}/ui/ui.js", timeout=30).status_code == 200
    assert requests.post(f"{url}/metadata", json={}, timeout=30).status_code == 401
    assert requests.post(f"{url}/ui/", timeout=30).status_code == 401  # only GET/HEAD are open
    # a literal "/ui/../metrics" (requests would normalize it) reaches the page, not /metrics
    connection = http.client.HTTPConnection("127.0.0.1", keyed_server.port, timeout=30)
    connection.request("GET", "/ui/../metrics")
    escaped = connection.getresponse()
    assert escaped.status == 404 and b"convzoo_batch_size" not in escaped.read()
    connection.close()
    described = expect(
        requests.get(f"{url}/docs.json", timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}),
        200,
        keyed_server,
    )
    assert "Authorization: Bearer $CONVZOO_API_KEY" in described["info"]["description"]


# -------------------------------------------------------------------------------- browser


def test_page_names_the_model_served(browser, server):
    open_page(browser, server)
    wait_for(browser, lambda d: model_facts(d)["model"] != "loading…", "no model shown")
    assert model_facts(browser) == {
        "model": "servicetest v1 (lenet5)",
        "runtime": "tensorflow fp32",
        "input": "48×48 px",
        "accuracy": "top-1 0.0 %, top-5 0.0 %",
    }
    assert browser.find_element("id", "key-form").is_displayed() is False


def test_photos_show_what_classify_answers_and_a_bad_file_says_why(browser, server, photos, bad_file):
    open_page(browser, server)
    sent = [photos[0], bad_file, *photos[1:]]
    shown_cards = upload(browser, sent)
    assert [c["file"] for c in shown_cards] == [p.name for p in sent]
    by_file = {c["file"]: c for c in shown_cards}
    refused = by_file.pop(bad_file.name)
    assert refused["state"] == "error" and refused["classes"] == []
    assert refused["message"] == ("Refused: not an image in a supported format (JPEG, PNG, WebP, BMP, GIF).")
    answers = classify(server, photos)
    for photo, answer in zip(photos, answers, strict=True):
        card = by_file[photo.name]
        assert card["state"] == "done", card
        assert same_classes(card["classes"], answer), (card["classes"], shown(answer))
        assert len(card["classes"]) == 5
        assert re.fullmatch(r"\d+\.\d\d s for 3 images in one request", card["timing"])
    assert console_errors(browser) == []


@pytest.fixture(scope="module")
def two_model_server(exported_model, bentoml_home, tmp_path_factory):
    """The small model (default) and the committed imagenette:2, served side by side."""
    root = tmp_path_factory.mktemp("two_models")
    shutil.copytree(exported_model, root / "servicetest" / "1")
    shutil.copytree(REPO / "models" / "imagenette" / "2", root / "imagenette" / "2")
    log = tmp_path_factory.mktemp("logs") / "ui_two_models.log"
    server = start_server(exported_model, bentoml_home, log, CONVZOO_MODELS_DIR=str(root))
    yield server
    server.stop()


def near_classes(page: list[list[str]], answer: dict, points: float = 1.0) -> bool:
    """The same top class, and every class shown within ``points`` percentage points of the answer
    (``answer`` with all classes): the int8 runtime's probabilities differ a little from one call
    to the next (up to ~0.4 points measured), so near ties may be listed in another order."""
    scores = {entry["label"]: 100 * entry["score"] for entry in answer["top_k"]}
    return page[0][0] == answer["label"] and all(
        abs(float(percent.split()[0]) - scores[label]) <= points for label, percent in page
    )


def columns(driver) -> list[list[dict]]:
    """Per card (newest first), per model column: ``{model, classes: [(label, percent)]}``."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#results > .card')].map(card =>
            [...card.querySelectorAll('.outcome')].map(outcome => ({
                model: outcome.querySelector('.model-name').textContent,
                classes: [...outcome.querySelectorAll('.class')].map(row =>
                    [row.querySelector('.label').textContent, row.querySelector('.score').textContent]),
            })));""")


def test_choose_a_model_or_compare_two_on_the_same_photos(browser, two_model_server, photos):
    from selenium.webdriver.support.ui import Select

    server = two_model_server
    open_page(browser, server)
    wait_for(browser, lambda d: d.find_element("id", "model-choice").is_displayed(), "no model choice")
    choice = Select(browser.find_element("id", "model-select"))
    assert [o.get_attribute("value") for o in choice.options] == ["servicetest:1", "imagenette:2"]
    assert choice.first_selected_option.get_attribute("value") == "servicetest:1"  # the default
    choice.select_by_value("imagenette:2")
    wait_for(browser, lambda d: model_facts(d)["model"] == "imagenette v2 (resnet18)", "model not switched")
    assert model_facts(browser)["runtime"] == "openvino int8"
    Select(browser.find_element("id", "compare-select")).select_by_value("servicetest:1")
    upload(browser, photos[:2])
    shown_columns = columns(browser)[:2]
    for model in ("imagenette:2", "servicetest:1"):
        parts = [("images", (p.name, p.read_bytes())) for p in photos[:2]]
        answers = expect(
            requests.post(
                f"{server.url}/classify", files=parts, data={"model": model, "top_k": "100"}, timeout=120
            ),
            200,
            server,
        )
        for card, answer in zip(shown_columns, answers, strict=True):
            column = next(c for c in card if c["model"] == model)
            assert near_classes(column["classes"], answer), (model, column, shown(answer)[:5])
    assert [[c["model"] for c in card] for card in shown_columns] == [["imagenette:2", "servicetest:1"]] * 2
    assert console_errors(browser) == []


def test_too_many_files_are_explained_on_each(browser, server, tmp_path):
    paths = []
    for i in range(9):  # the server takes 8 (CONVZOO_MAX_IMAGES in helpers.SERVER_SETTINGS)
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(files.encode(files.photo((40, 30), seed=i), "PNG"))
    open_page(browser, server)
    for card in upload(browser, paths):
        assert card["state"] == "error"
        assert card["message"].startswith("Too many or too large files for one request (")
        assert "the limit is 8" in card["message"]


def test_page_works_by_keyboard_and_at_phone_width(browser, server, photos):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    # a phone's viewport and touch screen (a headless window is never narrower than 500 px)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 800, "deviceScaleFactor": 2, "mobile": True},
    )
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    try:
        open_page(browser, server)
        assert browser.execute_script("return innerWidth") == PHONE_WIDTH
        assert browser.find_element("id", "camera").is_displayed()  # "Take a photo" on a phone
        assert not browser.find_element("id", "clear").is_displayed()  # nothing to clear yet
        # Tab reaches the drop zone (after the link to the API page); Enter and Space open the
        # file picker (its click() is replaced by a counter: headless Chromium shows no dialog)
        browser.execute_script("""
            window.picked = 0;
            document.getElementById('file-input').click = () => { window.picked += 1; };""")
        focused = []
        for _ in range(2):
            ActionChains(browser).send_keys(Keys.TAB).perform()
            focused.append(
                browser.execute_script(
                    "return document.activeElement.id || document.activeElement.textContent"
                )
            )
        assert focused == ["API documentation", "drop-zone"]
        drop_zone = browser.find_element("id", "drop-zone")
        assert drop_zone.value_of_css_property("outline-style") != "none"  # focus is visible
        for key in (Keys.ENTER, Keys.SPACE):
            ActionChains(browser).send_keys(key).perform()
        assert browser.execute_script("return window.picked") == 2

        upload(browser, photos[:2])
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= PHONE_WIDTH, f"the page scrolls sideways at {PHONE_WIDTH} px ({width} px)"
        assert browser.find_element("id", "clear").is_displayed()
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})


def test_page_asks_for_the_key_once_per_tab(browser, keyed_server, photos):
    open_page(browser, keyed_server)
    wait_for(browser, lambda d: d.find_element("id", "key-form").is_displayed(), "no key prompt")
    assert browser.execute_script("return document.activeElement.id") == "key-input"
    assert model_facts(browser)["model"] == "loading…"

    key_input = browser.find_element("id", "key-input")
    key_input.send_keys("wrong key\n")
    wait_for(
        browser, lambda d: d.find_element("id", "key-error").is_displayed(), "a wrong key was not refused"
    )
    assert "not accepted" in browser.find_element("id", "key-error").text

    browser.find_element("id", "key-input").send_keys(API_KEY + "\n")
    wait_for(
        browser,
        lambda d: model_facts(d)["model"] == "servicetest v1 (lenet5)",
        "the model was not shown after the key",
    )
    assert not browser.find_element("id", "key-form").is_displayed()
    [card] = upload(browser, photos[:1])
    assert card["state"] == "done"
    answer = classify(keyed_server, photos[:1], Authorization=f"Bearer {API_KEY}")[0]
    assert same_classes(card["classes"], answer)

    # kept for the tab: a reload asks nothing
    browser.refresh()
    wait_for(
        browser,
        lambda d: model_facts(d)["model"] == "servicetest v1 (lenet5)",
        "the key was not kept across a reload",
    )
    assert not browser.find_element("id", "key-form").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('convzoo-api-key')") == API_KEY

    # the page's "API documentation" link opens the API page, which asks /docs.json with the key
    browser.find_element("link text", "API documentation").click()
    wait_for(
        browser,
        lambda d: "convzoo image classifier" in d.find_element("id", "swagger-ui").text,
        "the API page could not load /docs.json with the key",
    )
    browser.execute_script("sessionStorage.clear()")


def test_page_requests_nothing_but_the_server(browser):
    """Runs last: every network request of the tests above went to the local server (blob:
    thumbnails and Chromium's own chrome:// pages never leave the machine), and no console error
    (a Content-Security-Policy violation, a script error)."""
    urls = requested(browser)
    assert any(url.endswith("/ui/ui.js") for url in urls)
    outside = [
        url
        for url in urls
        if urlparse(url).scheme in ("http", "https", "ws", "wss")
        and urlparse(url).hostname not in ("127.0.0.1", "localhost")
    ]
    assert outside == []
    assert console_errors(browser) == []


# ---------------------------------------------------------------------- README screenshot


def take_screenshot(output: Path, photos_dir: Path, count: int = 3) -> None:
    """Serve the default model, send ``count`` real photos and a text file through the page, save
    the page as a small PNG."""
    from PIL import Image

    folders = sorted(p for p in photos_dir.iterdir() if p.is_dir())
    picks = [sorted(folder.glob("*.JPEG"))[3] for folder in folders[::3][:count]]
    with tempfile.TemporaryDirectory() as home, contextlib.ExitStack() as stack:
        picks.insert(1, Path(home) / "holiday-notes.jpg")
        picks[1].write_bytes(files.refused_files()["notes.jpg"][0])
        env = {**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "true"}
        server = Server([], env, Path(home) / "serve.log")  # the default model, default settings
        stack.callback(server.stop)
        server.wait_ready()
        driver = chromium(920, 900)
        stack.callback(driver.quit)
        open_page(driver, server)
        upload(driver, picks)
        time.sleep(0.5)  # thumbnails decoded
        png = Path(home) / "page.png"
        driver.save_screenshot(str(png))
        Image.open(png).convert("RGB").quantize(128).save(output, optimize=True)
    print(f"{output}: {output.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    from helpers import SHARED_DATA

    parser = argparse.ArgumentParser(description="Take the README's screenshot of /ui.")
    parser.add_argument("--screenshot", type=Path, required=True)
    take_screenshot(parser.parse_args().screenshot, SHARED_DATA)
