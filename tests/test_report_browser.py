"""The report opened in a real headless Chromium: no console errors, every plot and image rendered, the table sorts
and filters. Skipped, with the reason, where Chromium, ChromeDriver or selenium is absent (CI installs them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium/ChromeDriver not found (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # headless, and nothing that phones home: these machines have no network beyond package registries
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _column_values(driver, header: str) -> list[str]:
    return driver.execute_script("""
        const t = document.getElementById('cell-table');
        const i = Array.from(t.tHead.rows[0].cells).findIndex(th => th.textContent.trim() === arguments[0]);
        return Array.from(t.tBodies[0].rows).filter(r => r.style.display !== 'none')
                    .map(r => r.cells[i].getAttribute('data-v'));""", header)


def test_report_renders_and_its_table_sorts_in_chromium(browser, tiny_sweep, tmp_path: Path) -> None:
    root, df, _ = tiny_sweep
    browser.get((root / "report.html").as_uri())
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    sizes = browser.execute_script("""
        return Array.from(document.querySelectorAll('svg, img')).map(e => {
            const r = e.getBoundingClientRect(); return [e.tagName, r.width, r.height]; });""")
    svgs = [s for s in sizes if s[0].lower() == "svg"]
    imgs = [s for s in sizes if s[0].lower() == "img"]
    assert len(svgs) >= 3  # FID fronts, KID fronts, the dual-output gate curve
    assert len(imgs) == df.drop_duplicates("sample_grid")["sample_grid"].notna().sum()
    assert all(w > 0 and h > 0 for _, w, h in sizes), sizes
    natural = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert all(n > 0 for n in natural)  # decoded, not a broken-image box

    header = browser.find_element("xpath", "//table[@id='cell-table']/thead/tr/th[normalize-space()='FID']")
    header.click()
    ascending = [float(v) for v in _column_values(browser, "FID") if v]
    assert ascending == sorted(ascending) and len(ascending) == len(df)
    header.click()
    descending = [float(v) for v in _column_values(browser, "FID") if v]
    assert descending == sorted(descending, reverse=True)

    box = browser.find_element("id", "filter")
    box.send_keys("dual_output")
    assert len(_column_values(browser, "FID")) == (df["technique"] == "dual_output").sum()
    assert "cells shown" in browser.find_element("id", "shown").text

    browser.execute_script("document.getElementById('filter').value=''; "
                           "document.getElementById('filter').dispatchEvent(new Event('input'))")
    shots = Path(os.environ.get("BENCH_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight"))
    assert browser.save_screenshot(str(shots / "tiny-report.png"))
    assert (shots / "tiny-report.png").stat().st_size > 10_000
