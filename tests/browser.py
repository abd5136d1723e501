"""Dashboards seen by a real browser, for tests: start a web server on a free port, wait until
it answers, stop it whatever happens; open its pages in headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright's bundled driver: `playwright install` is never
needed) and save screenshots where a person can look at them."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections (updates, sync, field
# trials) are refused many at a time in an offline sandbox and slow every page down.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright)"
    return None


def screenshot_dir() -> Path:
    """$LMLAB_SCREENSHOT_DIR, else <repo>/outputs/screenshots (git-ignored)."""
    folder = Path(os.environ.get("LMLAB_SCREENSHOT_DIR") or REPO / "outputs" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (MLflow's server runs uvicorn workers as
    children), then SIGKILL to whatever of the group is left 15 s later."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group is gone already
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with suppress(ProcessLookupError):  # None left: the usual case
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def server(
    command: list[str], ready_path: str, log: Path, port: int, timeout: float = 90, env=None
) -> Iterator[str]:
    """Runs `command` (which must listen on 127.0.0.1:`port`) and yields its base URL once
    GET <url><ready_path> answers 200. Output goes to `log`. The server is stopped on exit,
    also when the test fails."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url + ready_path):
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited ({proc.returncode}):\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}{ready_path} not ready in {timeout} s:\n{_tail(log)}")
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000, init_script: str | None = None):
    """A Playwright page in headless Chromium with a fresh profile; `init_script` runs in
    every document before the page's own scripts (e.g. to preset localStorage)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            if init_script:
                context.add_init_script(init_script)
            yield context.new_page()
        finally:
            context.close()
