"""Secrets from files: BSS_SECRET_KEY_FILE and secret_key_file in the partners file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, load_partners_file


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BSS_PARTNER_ID", "BSS_ACCESS_KEY", "BSS_SECRET_KEY", "BSS_SECRET_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_the_secret_key_comes_from_its_file_without_the_trailing_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "sk"
    secret.write_text("SK-from-file\n")
    monkeypatch.setenv("BSS_PARTNER_ID", "p1")
    monkeypatch.setenv("BSS_ACCESS_KEY", "AK")
    monkeypatch.setenv("BSS_SECRET_KEY_FILE", str(secret))

    settings = Settings()

    partner = settings.partners()["p1"]
    assert partner.secret_key.get_secret_value() == "SK-from-file"
    assert "SK-from-file" not in repr(settings)
    assert "SK-from-file" not in str(settings.model_dump())


def test_both_the_secret_and_its_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "sk"
    secret.write_text("SK\n")
    monkeypatch.setenv("BSS_SECRET_KEY", "SK")
    monkeypatch.setenv("BSS_SECRET_KEY_FILE", str(secret))

    with pytest.raises(ValidationError, match="not both") as caught:
        Settings()
    assert "SK" not in str(caught.value).replace("SECRET_KEY", "")  # no input echoed


def test_configuration_errors_never_echo_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BSS_SECRET_KEY", "SUPERSECRETVALUE")  # without its partner id: an error
    try:
        Settings()
    except ValidationError as exc:
        text = str(exc)
    else:
        pytest.fail("BSS_SECRET_KEY without BSS_PARTNER_ID must be refused")
    assert "SUPER" not in text


def test_an_unreadable_secret_file_names_the_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BSS_SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match=r"cannot read secret file .*missing"):
        Settings()


def test_partner_entries_may_reference_secret_files(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "p1.sk").write_text("S1-file\r\n")
    absolute = tmp_path / "p2.sk"
    absolute.write_text("S2-file")
    path = tmp_path / "partners.yaml"
    path.write_text(
        "partners:\n"
        "  - {partner_id: p1, access_key: A1, secret_key_file: secrets/p1.sk}\n"
        f"  - {{partner_id: p2, access_key: A2, secret_key_file: {absolute}}}\n"
        "  - {partner_id: p3, access_key: A3, secret_key: S3}\n"
    )

    accounts = load_partners_file(path)

    assert accounts["p1"].secret_key.get_secret_value() == "S1-file"
    assert accounts["p2"].secret_key.get_secret_value() == "S2-file"
    assert accounts["p3"].secret_key.get_secret_value() == "S3"


def test_a_partner_entry_with_both_a_secret_and_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sk").write_text("S")
    path = tmp_path / "partners.yaml"
    path.write_text(
        "partners:\n  - {partner_id: p1, access_key: A, secret_key: S, secret_key_file: sk}\n"
    )
    with pytest.raises(ValueError, match="secret_key or secret_key_file"):
        load_partners_file(path)
