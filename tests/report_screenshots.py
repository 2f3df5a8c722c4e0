"""Screenshots of a report in headless Chromium, for looking at it (and for the README/issue notes).

    python tests/report_screenshots.py reports/default.html reports/screenshots/default

writes <prefix>-page.png (the whole page) and one PNG per section the report has (fronts, machines, roofline, samples,
techniques, training, provenance).
Needs Chromium + ChromeDriver (bash tests/install-browser.sh) and selenium (the test extra).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from selenium import webdriver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("prefix", type=Path, help="output path prefix, e.g. reports/screenshots/default")
    parser.add_argument("--width", type=int, default=1500)
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(
        executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        driver.set_window_size(args.width, 1000)
        driver.get(args.report.resolve().as_uri())
        args.prefix.parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(args.width, height)
        driver.save_screenshot(f"{args.prefix}-page.png")
        for section in ("fronts", "machines", "roofline", "samples", "techniques", "training", "provenance"):
            # a section: its heading plus everything up to the next h2, wrapped for a screenshot
            if not driver.execute_script("return document.getElementById(arguments[0]) !== null", section):
                continue
            driver.execute_script("""
                const h = document.getElementById(arguments[0]); const box = document.createElement('div');
                box.id = 'shot-' + arguments[0]; h.parentNode.insertBefore(box, h);
                let n = h; const parts = [];
                while (n && !(n !== h && n.tagName === 'H2')) { parts.push(n); n = n.nextElementSibling; }
                parts.forEach(p => box.appendChild(p));""", section)
            driver.find_element("id", f"shot-{section}").screenshot(f"{args.prefix}-{section}.png")
    finally:
        driver.quit()
    print(f"wrote {args.prefix}-*.png")


if __name__ == "__main__":
    main()
