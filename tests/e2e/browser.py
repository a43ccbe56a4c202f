"""A real headless browser for end-to-end tests: Debian's Chromium driven by Selenium through
Debian's chromedriver (``scripts/ensure-services`` installs both when missing; nothing is
downloaded from elsewhere).

Selenium's calls block, so each runs in a worker thread (``asyncio.to_thread``): the service,
the console and the sandbox under test run on the test's event loop meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

__all__ = ["Browser", "open_browser"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium reaches out to Google's services, which this
# closed network refuses; --no-sandbox because tests run as root.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
WAIT_S = 15.0

T = TypeVar("T")


def _driver(profile: Path) -> WebDriver:
    profile.mkdir(parents=True, exist_ok=True)
    for binary in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(binary) is None:
            raise AssertionError(
                f"{binary} is missing: run scripts/ensure-services (apt-get install chromium "
                "chromium-driver)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def _texts(driver: WebDriver, css: str) -> list[str]:
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText);", css
    )
    return [" ".join(str(text).split()) for text in found]  # cells' tabs as single spaces


class Browser:
    """One browser window (its own profile, so its own cookies), at ``base`` (the console)."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call)

    async def open(self, path: str) -> None:
        await self._run(lambda: self.driver.get(self.base + path))

    async def fill(self, css: str, text: str) -> None:
        def typing() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)

        await self._run(typing)

    async def click(self, css: str) -> None:
        await self._run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def text(self, css: str) -> str:
        [found] = (await self.texts(css))[:1] or [""]
        return found

    async def texts(self, css: str) -> list[str]:
        """The rendered text of every element ``css`` matches, read in one step in the page:
        the live refresh may replace rows between two WebDriver calls."""
        return await self._run(lambda: _texts(self.driver, css))

    async def attribute(self, css: str, name: str) -> str | None:
        return await self._run(
            lambda: self.driver.find_element(By.CSS_SELECTOR, css).get_attribute(name)
        )

    async def wait(self, condition: Callable[[WebDriver], Any], *, within: float = WAIT_S) -> None:
        await self._run(lambda: WebDriverWait(self.driver, within).until(condition))

    async def wait_for_text(self, css: str, text: str, *, within: float = WAIT_S) -> None:
        def shows(driver: WebDriver) -> bool:
            return any(text in found for found in _texts(driver, css))

        await self.wait(shows, within=within)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url[len(self.base) :] if url.startswith(self.base) else url

    async def source(self) -> str:
        return await self._run(lambda: self.driver.page_source)

    async def screenshot(self, path: Path) -> None:
        await self._run(lambda: self.driver.save_screenshot(str(path)))

    async def script(self, code: str) -> Any:
        return await self._run(lambda: self.driver.execute_script(code))


@asynccontextmanager
async def open_browser(base: str, profile: Path) -> AsyncIterator[Browser]:
    driver = await asyncio.to_thread(_driver, profile)
    try:
        yield Browser(driver, base)
    finally:
        await asyncio.to_thread(driver.quit)
