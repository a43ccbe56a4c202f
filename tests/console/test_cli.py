"""``bss-relay console`` on the command line: it refuses to start without a valid users file
(non-zero, saying why), starts as a process of its own, serves HTTPS with --tls-cert/--tls-key,
and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from service.cli import main
from service.ops.console import Users, UsersFileError
from tests.console.conftest import OPERATOR_TOKEN, sha256_hex

ALICE = sha256_hex(OPERATOR_TOKEN)
BOB = sha256_hex("bob")


def users_file(tmp_path: Path, text: str, name: str = "users.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_format_of_the_contract_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = users_file(
        tmp_path,
        f"users:\n  alice: {{role: operator, token_sha256: {ALICE}}}\n"
        f"  bob:   {{role: viewer,   token_sha256: {BOB}}}\n",
    )
    json_file = users_file(
        tmp_path,
        json.dumps(
            {
                "users": {
                    "alice": {"role": "operator", "token_sha256": ALICE},
                    "bob": {"role": "viewer", "token_sha256": BOB},
                }
            }
        ),
        "users.json",
    )
    for path in (yaml_file, json_file):
        found = Users.load(path)
        alice, bob = found.authenticate(OPERATOR_TOKEN), found.authenticate("bob")
        assert alice is not None
        assert (alice.name, alice.role, alice.may_act) == ("alice", "operator", True)
        assert bob is not None
        assert (bob.name, bob.may_act) == ("bob", False)
        assert found.authenticate("nobody") is None
        assert found.authenticate(ALICE) is None  # the digest is not the token


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "users"),
        ("users: {}", "users"),
        ("users: [alice]", "users"),
        (f"users:\n  alice: {{role: admin, token_sha256: {ALICE}}}\n", "role"),
        (f"users:\n  alice: {{role: viewer, token_sha256: {ALICE.upper()}}}\n", "token_sha256"),
        ("users:\n  alice: {role: viewer, token_sha256: abc}\n", "token_sha256"),
        ("users:\n  alice: {role: viewer, token: secret}\n", "token"),
        (
            f"users:\n  a: {{role: viewer, token_sha256: {ALICE}}}\n"
            f"  b: {{role: operator, token_sha256: {ALICE}}}\n",
            "share one token",
        ),
        (f"users:\n  'al ice': {{role: viewer, token_sha256: {ALICE}}}\n", "user name"),
        ("users: [unclosed", "not valid YAML"),
    ],
)
def test_an_invalid_users_file_is_refused_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, why: str
) -> None:
    path = users_file(tmp_path, text)
    with pytest.raises(UsersFileError, match=why):
        Users.load(path)
    assert main(["console", "--users-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bss-relay console: ")
    assert str(path) in err
    assert "secret" not in err  # the input is never echoed


def test_no_users_file_no_console(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("RELAY_CONSOLE_USERS_FILE", raising=False)
    assert main(["console"]) == 2
    assert "no users file: set RELAY_CONSOLE_USERS_FILE" in capsys.readouterr().err
    assert main(["console", "--users-file", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the users file" in capsys.readouterr().err


def test_tls_needs_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = users_file(tmp_path, f"users:\n  alice: {{role: operator, token_sha256: {ALICE}}}\n")
    assert main(["console", "--users-file", str(path), "--tls-cert", str(path)]) == 2
    assert "both a certificate" in capsys.readouterr().err
    argv = ["--tls-cert", str(path), "--tls-key", str(path)]
    assert main(["console", "--users-file", str(path), *argv]) == 2
    assert "cannot use the TLS certificate or key" in capsys.readouterr().err


def test_help_names_the_users_file_roles_and_routes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["console", "--help"])
    out = capsys.readouterr().out
    for words in ("RELAY_CONSOLE_USERS_FILE", "operator", "viewer", "/api/dead-letters/replay"):
        assert words in out


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed to make a test certificate"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_the_process_serves_https_and_stops_on_sigterm(
    tmp_path: Path, console_amqp_url: str
) -> None:
    """The console as operators run it: its own process, TLS from files, the users file from
    the environment; it answers, its cookie is Secure, and SIGTERM stops it with 0."""
    cert, key = await asyncio.to_thread(self_signed, tmp_path)
    path = users_file(tmp_path, f"users:\n  alice: {{role: operator, token_sha256: {ALICE}}}\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BSS_", "RELAY_"))},
        "AMQP_URL": console_amqp_url,
        "STORE_URL": f"sqlite:///{tmp_path}/store.db",
        "RELAY_CONSOLE_USERS_FILE": str(path),
        "RELAY_CONSOLE_PORT": "0",
    }
    log = tmp_path / "console.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            "console",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        url = await started(proc, log)
        assert url.startswith("https://127.0.0.1:")
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        connector = aiohttp.TCPConnector(ssl=insecure)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(f"{url}/healthz") as answer:
                assert answer.status == 200
            async with http.get(
                f"{url}/api/quota", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
            ) as answer:
                assert (answer.status, await answer.json()) == (200, [])
            async with http.get(f"{url}/login") as answer:
                assert "Secure" in answer.headers["Set-Cookie"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = await asyncio.to_thread(log.read_text)
    assert OPERATOR_TOKEN not in text
    assert ALICE not in text


def _url_in(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if "console_started" in line:
            return str(json.loads(line)["url"])
    return None


async def started(proc: asyncio.subprocess.Process, log: Path) -> str:
    for _ in range(600):
        url = _url_in(log)
        if url is not None:
            return url
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError("the console did not start: " + await asyncio.to_thread(log.read_text))


def test_the_rehearsal_users_file_matches_what_it_says() -> None:
    """deploy/console-users.example.yaml (compose.yaml mounts it) lets in the tokens its
    comments name, with the roles they name."""
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    found = Users.load(deploy / "console-users.example.yaml")
    alice = found.authenticate("rehearsal-operator-token")
    bob = found.authenticate("rehearsal-viewer-token")
    assert alice is not None
    assert (alice.name, alice.role) == ("alice", "operator")
    assert bob is not None
    assert (bob.name, bob.role) == ("bob", "viewer")
    assert "console-users.example.yaml" in (deploy / "compose.yaml").read_text()
