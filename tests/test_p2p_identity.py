"""Identity key files: created private, and refused when unsafe, not ours or empty."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from heartbeat.errors import IdentityError
from heartbeat.net.identity import IdentityFileRefused, check_identity_file
from heartbeat.net.p2p import load_or_create_identity, peer_id_of

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def test_created_private_and_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "state" / "id.key"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert peer_id_of(load_or_create_identity(path)) == peer_id_of(first)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_readable_by_others_is_refused_naming_chmod(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "id.key"
    load_or_create_identity(path)
    path.chmod(mode)
    with pytest.raises(IdentityFileRefused) as info:
        load_or_create_identity(path)
    assert isinstance(info.value, IdentityError)
    assert f"chmod 600 {path}" in str(info.value)
    assert f"{mode:o}" in str(info.value)


def test_owner_only_read_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    key = load_or_create_identity(path)
    path.chmod(0o400)
    assert peer_id_of(load_or_create_identity(path)) == peer_id_of(key)


def test_empty_file_is_named_empty(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    path.touch(mode=0o600)
    with pytest.raises(IdentityFileRefused) as info:
        load_or_create_identity(path)
    text = str(info.value)
    assert "is empty" in text and "Invalid RSA" not in text
    assert path.exists()  # never replaced behind the operator's back


def test_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    path.mkdir(mode=0o700)
    with pytest.raises(IdentityFileRefused, match="not a regular file"):
        check_identity_file(path)


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    load_or_create_identity(path)
    os.chown(path, 65534, -1)
    with pytest.raises(IdentityFileRefused, match="owned by uid 65534"):
        load_or_create_identity(path)


def test_owned_by_another_user_is_refused_as_seen_by_another_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without root a file cannot be given away: present this user as another one instead.
    path = tmp_path / "id.key"
    load_or_create_identity(path)
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(IdentityFileRefused) as info:
        check_identity_file(path)
    assert f"owned by uid {owner}" in str(info.value)


@pytest.mark.integration
def test_aggregator_cli_exits_2_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.key"
    load_or_create_identity(path)
    path.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIL_HEARTBEAT_")}
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "id", "--identity-file", str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"chmod 600 {path}" in result.stderr
