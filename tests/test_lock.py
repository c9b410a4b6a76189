"""The lock file pins every distribution pyproject.toml names, so the two cannot drift.

scripts/setup installs from requirements/dev.lock with --require-hashes; a dependency added
to pyproject.toml but not to the lock would only fail on a fresh machine.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "dev.lock"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalise(name: str) -> str:
    """PEP 503: case and runs of -, _ and . do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    assert match, f"unparsable requirement {requirement!r}"
    return normalise(match.group(1))


def declared() -> dict[str, str]:
    """Every requirement of the project and its dev extra, by normalised name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return {requirement_name(req): req for req in requirements}


def locked(text: str) -> dict[str, str]:
    """The pinned versions in a pip-compile / uv lock, by normalised name."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def test_the_lock_pins_every_declared_distribution() -> None:
    pins = locked(LOCK.read_text(encoding="utf-8"))
    missing = sorted(name for name in declared() if name not in pins)
    assert not missing, f"in pyproject.toml but not in {LOCK.name}: {missing} (see README)"


def test_the_lock_keeps_the_exact_libp2p_pin() -> None:
    assert declared()["libp2p"] == "libp2p==0.8.1"
    assert locked(LOCK.read_text(encoding="utf-8"))["libp2p"] == "0.8.1"


def test_every_pin_carries_a_hash() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text(encoding="utf-8"))
    unhashed = [b.split()[0] for b in blocks if _PIN.match(b) and "--hash=sha256:" not in b]
    assert not unhashed, f"pins without a hash (pip --require-hashes refuses them): {unhashed}"


def test_names_are_normalised() -> None:
    assert normalise("Prometheus_Client") == normalise("prometheus-client") == "prometheus-client"
    assert requirement_name("hypercorn[trio]>=0.17") == "hypercorn"
    assert requirement_name("grafana-foundation-sdk==1769699379!11.6.0") == (
        "grafana-foundation-sdk"
    )
    assert locked("PyYAML==6.0.2 \\\n    --hash=sha256:00\n# via x\n") == {"pyyaml": "6.0.2"}
