"""The fixture policy itself: a missing capture skips a test locally and fails it under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kit.paths import need_fixture


def test_present_fixture_is_returned(tmp_path: Path) -> None:
    f = tmp_path / "capture.json"
    f.write_text("{}")
    assert need_fixture(f) == f


def test_missing_fixture_skips_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        need_fixture(tmp_path / "missing.json")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_missing_fixture_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true requires"):
        need_fixture(tmp_path / "missing.json")
