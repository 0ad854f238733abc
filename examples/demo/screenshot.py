"""The README's picture of the page: the demo's two translators served side by side, one test sentence typed and
translated in Debian's chromium (headless, through selenium), the page saved as a PNG.

    python examples/demo/screenshot.py runs/demo docs/figures/service_page.png [LINE_NUMBER]

Needs `make demo` first (runs/demo/attention.onnx, encdec.onnx and raw/test.src), chromium and chromedriver.
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    demo, output = sys.argv[1], sys.argv[2]
    line = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    sentence = open(os.path.join(demo, "raw", "test.src"), encoding="utf-8").read().splitlines()[line]
    port = 8765
    server = subprocess.Popen([sys.executable, "-m", "fairseq_bahdanau.deploy.serve", "--port", str(port),
                               os.path.join(demo, "attention.onnx"), os.path.join(demo, "encdec.onnx")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        with tempfile.TemporaryDirectory() as profile:
            for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--window-size=1400,980", f"--user-data-dir={profile}"):
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                wait = WebDriverWait(driver, 60)
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input.model")) == 2)
                box = driver.find_element(By.ID, "text")
                box.clear()
                box.send_keys(sentence)
                driver.find_element(By.ID, "translate").click()
                encdec = (By.CSS_SELECTOR, ".panel[data-model=encdec]")
                wait.until(expected_conditions.presence_of_element_located(encdec))
                cells = driver.find_elements(By.CSS_SELECTOR, ".panel[data-model=attention] td.cell")
                webdriver.ActionChains(driver).move_to_element(cells[len(cells) // 3]).perform()  # a hovered pair
                driver.save_screenshot(output)
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait()
    print(output)


if __name__ == "__main__":
    main()
