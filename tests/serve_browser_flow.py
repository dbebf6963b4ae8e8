"""A user's first minutes with ``featkit serve``, in headless Chromium driven by Selenium.

Run by tests/test_serve_browser.py inside a private network namespace (loopback only), so neither the server nor
the browser can reach another address. Starts the server on 127.0.0.1, opens the page, uploads a photo, waits for
the result grid, clicks a result, waits for the new grid, visits the other tabs, saves screenshots, and prints
what it saw as one JSON line.

    python tests/serve_browser_flow.py INDEX QUERY_IMAGE OUT_DIR [--weights FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# nothing but the page: no updates, sync, metrics, safe browsing or other calls home
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--disable-extensions", "--metrics-recording-only", "--disable-domain-reliability", "--no-pings",
         "--disable-features=OptimizationHints,MediaRouter,Translate", "--window-size=1360,1000"]


def browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def result_ids(driver) -> list[int]:
    from selenium.webdriver.common.by import By

    return [int(f.get_attribute("data-id")) for f in driver.find_elements(By.CSS_SELECTOR, "#results figure")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("query")
    parser.add_argument("out")
    parser.add_argument("--weights")
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from serving import running_server

    from featkit.index import Index
    from featkit.serve.app import ServeConfig
    from featkit.serve.library import Library

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    library = Library(Index.open(args.index), weights=args.weights, device="cpu")
    seen: dict = {}
    with running_server(library, ServeConfig()) as base, tempfile.TemporaryDirectory() as profile:
        driver = browser(profile)
        wait = WebDriverWait(driver, 60)
        try:
            driver.get(base + "/")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#info [data-field=model] dd"))
            seen["header"] = {f.get_attribute("data-field"): f.find_element(By.TAG_NAME, "dd").text
                              for f in driver.find_elements(By.CSS_SELECTOR, "#info > div")}
            k = driver.find_element(By.ID, "k")
            k.clear()
            k.send_keys(str(args.k))
            driver.find_element(By.ID, "file").send_keys(str(Path(args.query).resolve()))
            wait.until(lambda d: len(result_ids(d)) == args.k)
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
            seen["upload_results"] = result_ids(driver)
            seen["upload_labels"] = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .label")]
            seen["upload_status"] = driver.find_element(By.ID, "status").text
            driver.save_screenshot(str(out / "serve-upload.png"))

            clicked = seen["upload_results"][1]
            driver.find_element(By.CSS_SELECTOR, f'#results figure[data-id="{clicked}"] .img').click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#query a") and d.find_element(
                By.CSS_SELECTOR, "#query a").get_attribute("href").endswith(f"/api/image/{clicked}"))
            wait.until(lambda d: len(result_ids(d)) == args.k and clicked not in result_ids(d))
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
            seen["clicked"] = clicked
            seen["click_results"] = result_ids(driver)
            seen["differs_marked"] = len(driver.find_elements(By.CSS_SELECTOR, "#results figure.differs"))
            driver.save_screenshot(str(out / "serve-click.png"))

            driver.find_element(By.CSS_SELECTOR, '#tabs [data-tab="browse"]').click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#library figure"))
            seen["browse_tiles"] = len(driver.find_elements(By.CSS_SELECTOR, "#library figure"))
            seen["browse_page"] = driver.find_element(By.ID, "page").text
            driver.find_element(By.CSS_SELECTOR, '#tabs [data-tab="duplicates"]').click()
            wait.until(lambda d: "cosine" in d.find_element(By.ID, "dup-status").text)
            seen["duplicates_status"] = driver.find_element(By.ID, "dup-status").text
            driver.find_element(By.CSS_SELECTOR, '#tabs [data-tab="map"]').click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#legend li"))
            seen["map_drawn"] = driver.execute_script(
                "const c = document.getElementById('canvas'); const d = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
                "for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) n++; return n;")
            driver.save_screenshot(str(out / "serve-map.png"))
            time.sleep(0.2)
            seen["console"] = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        finally:
            driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
