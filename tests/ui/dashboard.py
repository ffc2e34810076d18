"""Drives the dashboard in headless Chromium against a live service (started by the Rust test
`dashboard::the_dashboard_drives_a_batch_from_upload_to_download`).

Environment: BASE_URL, KEY, SMALL (a .jsonl path: a batch that finishes quickly, with failures),
BIG (a .jsonl path: a batch slow enough to cancel), OUT (a directory for downloads and the
screenshots taken on failure), DOCS (optional: where to save a screenshot of each page).
Prints "ok STEP" per step and "all checks passed" at the end.
"""

import json
import os
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from browser import DOWNLOADS, click, console_errors, d, done, find, finish, shot, step, text_of, wait, wait_text

BASE = os.environ["BASE_URL"]
KEY = os.environ["KEY"]


def api(method, path):
    """The API through the page's own fetch (same key), for checks."""
    return d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[1], {method: arguments[0], headers: {Authorization: 'Bearer ' + arguments[2]}})"
        ".then(r => r.json()).then(done, e => done({error: String(e)}));",
        method, path, KEY)


def batch_id_from_url():
    return d.current_url.rsplit("/", 1)[-1]


def create_batch(file_name):
    d.get(f"{BASE}/ui/#/batches")
    select = Select(find("#new-file"))
    wait.until(lambda _: any(file_name in o.text for o in select.options))
    for option in select.options:
        if file_name in option.text:
            select.select_by_value(option.get_attribute("value"))
    click("#create-batch")
    wait.until(lambda _: "/batches/batch_" in d.current_url)
    return batch_id_from_url()


def checks():
    step("sign in")
    d.get(f"{BASE}/ui/")
    find("#api-key").send_keys("sk-wrong")
    click("#sign-in")
    wait_text("[role=alert]", lambda t: "not accepted" in t, "a wrong key is refused")
    shot("sign-in")
    key = find("#api-key")
    key.clear()
    key.send_keys(KEY + Keys.ENTER)
    find("table#batches")
    assert d.execute_script("return sessionStorage.length") == 1
    assert d.execute_script("return localStorage.length") == 0, "the key is kept in the session only"
    done("sign in")

    step("upload")
    click("nav a[data-page=files]")
    for path in (os.environ["SMALL"], os.environ["BIG"]):
        find("#upload-input").send_keys(path)
        name = os.path.basename(path)
        wait.until(lambda _: name in find("table#files").text)
    # A file dropped on the drop zone (the drop event as a browser sends it).
    d.execute_script(
        "const t = new DataTransfer();"
        "const line = JSON.stringify({custom_id: 'd0', method: 'POST', url: '/v1/chat/completions',"
        " body: {model: 'sim-model', messages: [{role: 'user', content: 'hi'}]}});"
        "t.items.add(new File([line + '\\n'], 'dropped.jsonl', {type: 'application/jsonl'}));"
        "document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: t, bubbles: true}));")
    wait.until(lambda _: "dropped.jsonl" in find("table#files").text)
    shot("files")
    done("upload")

    step("create a batch and watch it reach 100%")
    small = create_batch(os.path.basename(os.environ["SMALL"]))
    wait_text("#batch-status", lambda t: t == "completed", "the batch completes")
    bar = find("[role=progressbar]")
    wait.until(lambda _: bar.get_attribute("aria-valuenow") == "100")
    batch = api("GET", f"/v1/batches/{small}")
    counts = batch["request_counts"]
    assert counts["completed"] + counts["failed"] == counts["total"], counts
    assert counts["failed"] > 0, "the engine fails some requests"
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#errors tbody tr")) > 0)
    assert "http 400" in text_of("#errors"), text_of("#errors")
    done("progress reaches 100%")

    step("open a failed request")
    Select(find("#results-status")).select_by_value("failed")
    wait.until(lambda _: all("failed" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
               and len(d.find_elements(By.CSS_SELECTOR, "#results tbody .result-open")) > 0)
    def open_first(_):
        first = d.find_elements(By.CSS_SELECTOR, "#results tbody .result-open")[0]
        custom_id = first.text
        first.send_keys(Keys.ENTER)  # by keyboard
        return custom_id

    custom_id = wait.until(open_first)
    result = json.loads(find("#detail-result").text)
    request = json.loads(find("#detail-input").text)
    assert request["custom_id"] == custom_id, request
    assert result["custom_id"] == custom_id and result["response"]["status_code"] == 400, result
    # Search by custom_id finds exactly that request.
    Select(find("#results-status")).select_by_value("")
    find("#results-search").send_keys(custom_id)
    click("#results-find")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#results tbody .result-open")) == 1)
    shot("request")
    done("open a failed request")

    step("download the output")
    click("#download-output")
    target = os.path.join(DOWNLOADS, f"{small}_output.jsonl")
    deadline = time.time() + 30
    while not os.path.exists(target) and time.time() < deadline:
        time.sleep(0.2)
    with open(target) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert len(lines) == counts["completed"], (len(lines), counts)
    done("download the output")

    step("a narrow window")
    d.set_window_size(400, 900)
    d.refresh()
    find("[role=progressbar]")
    overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 400px window"
    unlabelled = d.execute_script(
        "return [...document.querySelectorAll('input, select')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id)")
    assert not unlabelled, f"controls without a label: {unlabelled}"
    shot("batch-narrow")
    d.set_window_size(1280, 1000)
    done("a narrow window")

    step("cancel a running batch")
    big = create_batch(os.path.basename(os.environ["BIG"]))
    wait_text("#batch-status", lambda t: t == "in_progress", "the big batch runs")
    wait.until(lambda _: int(find("[role=progressbar]").get_attribute("aria-valuenow") or 0) >= 3)
    shot("batch")
    click("#cancel-batch")
    click("#confirm-yes")
    wait_text("#batch-status", lambda t: t == "cancelled", "the batch is cancelled")
    batch = api("GET", f"/v1/batches/{big}")
    assert batch["status"] == "cancelled" and batch["request_counts"]["completed"] < batch["request_counts"]["total"], batch
    done("cancel a running batch")

    step("the list")
    d.get(f"{BASE}/ui/#/batches")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "table#batches tbody tr")) == 2)
    rows = d.find_elements(By.CSS_SELECTOR, "table#batches tbody tr")
    assert rows[0].get_attribute("data-id") == big, "newest first"
    Select(find("#status-filter")).select_by_value("completed")
    wait.until(lambda _: [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "table#batches tbody tr")] == [small])
    Select(find("#status-filter")).select_by_value("")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "table#batches tbody tr")) == 2)
    shot("batches")
    done("the list")

    step("delete a file")
    click("nav a[data-page=files]")
    before = len(d.find_elements(By.CSS_SELECTOR, "table#files tbody tr")) or len(
        wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "table#files tbody tr")))
    click("table#files tbody tr:last-child .file-delete")
    click("#confirm-yes")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "table#files tbody tr")) == before - 1)
    done("delete a file")

    # The wrong key's 401 is the one failed load expected.
    errors = console_errors(expected=("401",))
    assert not errors, f"errors in the browser console: {errors}"


finish(checks)
