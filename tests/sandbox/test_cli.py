"""``python -m service.sandbox`` (= ``bss-relay sandbox``): documented options, serving, SIGINT."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import aiohttp


def test_help_documents_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.sandbox", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in (
        "--port",
        "--host",
        "--data",
        "--limits",
        "--faults",
        "--log-size",
        "drop_after_apply",
    ):
        assert option in result.stdout, option


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serves_until_interrupted() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.sandbox", "--port", str(port), "--limits", '{"*": 5}',
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert f"http://127.0.0.1:{port}" in line.decode()
        url = f"http://127.0.0.1:{port}/_sandbox/limits"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert (await resp.json())["effective"]["renewal_resources"] == 5
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


def test_bad_option_values_are_reported() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.sandbox", "--faults", "{not json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--faults" in result.stderr
