"""Headless Chromium for the status page's tests, clicked as its user clicks it.

Selenium drives Debian's chromedriver (it finds and downloads nothing itself). Where
Chromium, its driver or Selenium is missing the browser tests skip, but fail in CI
(CI=true), which must run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

try:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver import Chrome, ChromeOptions
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # the test extra brings it: its absence is reported by the browser tests themselves
    Chrome = None

# What the tests use of Selenium directly, from here, where its absence is handled.
__all__ = ["By", "Chrome", "Keys", "Select", "WebElement"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# How long a page or a click may take on a busy 2-core machine: a deadline, not a measure.
PAGE_SECONDS = 120


def missing(what: str) -> NoReturn:
    """No browser test without ``what``: skipped on a developer's machine, failed in CI, which must run them."""
    message = f"the browser tests need {what} (./scripts/setup installs it)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message)
    pytest.skip(message)


def wait(driver: Chrome, condition, what: str) -> None:
    # A page being replaced while it is looked at is looked at again.
    waiting = WebDriverWait(driver, PAGE_SECONDS, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    waiting.until(condition, f"waiting for {what} at {driver.current_url}")


def loaded(driver: Chrome) -> None:
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the page to load")


def heading(driver: Chrome) -> str:
    return driver.find_element(By.TAG_NAME, "h1").text


def text(driver: Chrome) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def click(driver: Chrome, element: WebElement) -> None:
    """Click a link or a form's button, as the user does, and wait for the page it leads to."""
    element.click()
    wait(driver, expected_conditions.staleness_of(element), "the click to leave the page")
    loaded(driver)


def button(driver: Chrome, label: str) -> WebElement:
    return driver.find_element(By.XPATH, f"//button[normalize-space()='{label}']")


def follow(driver: Chrome, link: str) -> None:
    """Open a sign-in link as the user's browser does; its page moves on by itself (a meta refresh), a refusal stays."""
    driver.get(link)
    wait(driver, lambda d: "/login" not in d.current_url or heading(d) != "Signed in", "the sign-in page to move on")
    loaded(driver)


def open_chrome(profile: Path) -> Iterator[Chrome]:
    """Headless Chromium driven by Debian's chromedriver (Selenium finds and downloads nothing itself)."""
    if Chrome is None:
        missing("Selenium (the test extra)")
    if CHROMIUM is None or CHROMEDRIVER is None:
        missing("chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium's sandbox refuses to start as root, which CI runs as.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                     "--window-size=1280,2000", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(PAGE_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()
