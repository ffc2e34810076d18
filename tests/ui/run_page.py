"""Drives `run --ui`'s page in headless Chromium while a `run` job goes (started by the Rust test
`dashboard::run_ui_shows_the_job_as_it_goes`).

Environment: BASE_URL (the page's address), TITLE (the job's output, the page's title), and
those of browser.py. Prints "ok STEP" per step and "all checks passed" at the end.
"""

import json
import os

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from browser import click, console_errors, d, done, find, finish, shot, step, text_of, wait, wait_text

BASE = os.environ["BASE_URL"]


def checks():
    step("the job's page")
    d.get(f"{BASE}/ui/")
    wait.until(lambda _: d.current_url.endswith("#/batches/job"))
    wait_text("h1", lambda t: t == os.environ["TITLE"], "the title is the job's output")
    assert not d.find_element(By.ID, "nav").is_displayed(), "no sign-in, no other pages"
    wait_text("#batch-status", lambda t: t == "in_progress", "the job runs")
    wait.until(lambda _: int(find("[role=progressbar]").get_attribute("aria-valuenow") or 0) >= 5)
    assert not find("#cancel-batch").is_displayed(), "read-only"
    done("the job's page")

    step("results so far")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#results tbody .result-open")) > 0)
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#errors tbody tr")) > 0)
    assert "http 503" in text_of("#errors"), text_of("#errors")
    Select(find("#results-status")).select_by_value("failed")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#results tbody .result-open")) > 0
               and all("failed" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#results tbody tr")))
    def open_first(_):
        first = d.find_elements(By.CSS_SELECTOR, "#results tbody .result-open")[0]
        custom_id = first.text
        first.click()
        return custom_id

    custom_id = wait.until(open_first)
    result = json.loads(find("#detail-result").text)
    assert result["custom_id"] == custom_id and result["response"]["status_code"] == 503, result
    assert json.loads(find("#detail-input").text)["custom_id"] == custom_id
    wait.until(lambda _: find(".chart svg"))
    shot("run-ui")
    done("results so far")

    step("the end")
    wait_text("#batch-status", lambda t: t == "completed", "the job completes")
    wait.until(lambda _: find("[role=progressbar]").get_attribute("aria-valuenow") == "100")
    rows = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in d.find_elements(By.CSS_SELECTOR, "#models tbody tr")]
    assert [r[:2] for r in rows] == [["sim-model", "750"], ["sim-model:adapter", "750"]], rows
    assert all(int(r[2].replace(",", "")) + int(r[3].replace(",", "")) == 750 for r in rows), rows
    done("the end")

    errors = console_errors()
    assert not errors, f"errors in the browser console: {errors}"


finish(checks)
