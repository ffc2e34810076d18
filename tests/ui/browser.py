"""What the browser tests share: headless Chromium through Selenium, waits, screenshots.

Environment: OUT (a directory for downloads and the screenshots taken on failure), DOCS
(optional: where `shot` saves a screenshot of each page), CHROMIUM and CHROMEDRIVER (paths).
"""

import os
import sys
import time
import traceback

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

OUT = os.environ["OUT"]
DOCS = os.environ.get("DOCS")
DOWNLOADS = os.path.join(OUT, "downloads")
os.makedirs(DOWNLOADS, exist_ok=True)


def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": DOWNLOADS,
        "download.prompt_for_download": False,
    })
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


d = driver()
# The page re-renders as it refreshes: an element found a moment ago may be gone.
wait = WebDriverWait(d, 60, ignored_exceptions=(StaleElementReferenceException,))
step_name = "start"


def step(name):
    global step_name
    step_name = name


def done(name):
    print(f"ok {name}", flush=True)


def shot(name):
    if DOCS:
        os.makedirs(DOCS, exist_ok=True)
        time.sleep(0.3)
        d.save_screenshot(os.path.join(DOCS, f"{name}.png"))


def find(css):
    return wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def click(css):
    el = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, css)))
    el.click()
    return el


def text_of(css):
    return find(css).text


def wait_text(css, predicate, what):
    try:
        wait.until(lambda _: predicate(d.find_element(By.CSS_SELECTOR, css).text))
    except TimeoutException:
        raise AssertionError(f"{what}: {css} shows {d.find_element(By.CSS_SELECTOR, css).text!r}")


def console_errors(expected=()):
    """SEVERE console entries, but those naming one of `expected`."""
    return [e for e in d.get_log("browser")
            if e.get("level") == "SEVERE" and not any(x in e.get("message", "") for x in expected)]


def finish(checks):
    """Runs `checks`; on failure saves a screenshot of the page and exits 1."""
    try:
        checks()
        print("all checks passed", flush=True)
    except Exception:
        path = os.path.join(OUT, f"failure-{step_name.replace(' ', '-')}.png")
        try:
            d.save_screenshot(path)
            print(f"screenshot: {path}", flush=True)
        except Exception:
            pass
        traceback.print_exc()
        print(f"FAILED at step: {step_name}", flush=True)
        sys.exit(1)
    finally:
        d.quit()
