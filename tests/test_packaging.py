"""Installing and running for years: the wheel and the systemd units.

- The wheel built from the tree holds every file of the two packages (the status page's
  templates and static files too), installs into a fresh venv outside the tree, and its
  console scripts run from a directory outside it. The venv reuses the project venv's
  site-packages for the dependencies (a .pth line), so nothing is downloaded.
- The units in packaging/systemd/ name the console scripts, the state directory and the env
  files; `systemd-analyze verify` (Debian's `systemd`; skipped without it, failed under
  CI=true) accepts them with the installed programs in ExecStart, and their exposure score
  stays "OK". (tests/test_packaging_sandbox.py runs both programs in the units' sandbox.)
- The runbooks' `systemctl` commands name these units. (The env file examples are checked
  with the other examples, in tests/test_examples.py.)
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import pytest

from aggregator.__main__ import parse_args
from aggregator.config import AggregatorConfig

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "packaging" / "systemd"
PACKAGES = ("heartbeat", "aggregator")
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))[
    "project"
]["scripts"]
STATE = "fil-heartbeat"  # the units' StateDirectory=, platformdirs' application name

# -- reading the files ------------------------------------------------------------------


def unit_directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value (a key may repeat, e.g. SystemCallFilter=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return unit_directives(UNITS / f"{name}.service")["Service"]


def one(directives: Mapping[str, list[str]], key: str) -> str:
    values = directives.get(key, [])
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


# -- the units ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_units_run_the_console_scripts_from_the_state_directory(name: str) -> None:
    svc = service(name)
    assert one(svc, "ExecStart").split()[:2] == [f"/usr/local/bin/{name}", "run"]
    sysusers = (UNITS / "fil-heartbeat.sysusers").read_text(encoding="utf-8")
    user = one(svc, "User")
    assert re.search(rf"^u {re.escape(user)} ", sysusers, re.M), "User= is the sysusers.d user"
    assert one(svc, "StateDirectory") == STATE
    # the programs' default files go to $XDG_STATE_HOME/fil-heartbeat = the StateDirectory
    assert "XDG_STATE_HOME=%S" in svc["Environment"]
    assert one(svc, "EnvironmentFile") == f"-/etc/fil-heartbeat/{name}.env"
    assert (UNITS / f"{name}.env").is_file()
    assert one(svc, "Restart") == "on-failure"
    assert one(svc, "RestartPreventExitStatus") == "2"  # a setting to fix: no restart loop
    assert unit_directives(UNITS / f"{name}.service")["Install"]["WantedBy"] == [
        "multi-user.target"
    ]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_units_are_sandboxed(name: str) -> None:
    svc = service(name)
    expected = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    assert {key: one(svc, key) for key in expected} == expected
    assert "@system-service" in svc["SystemCallFilter"]
    # ProcSubset=pid would hide /proc/stat, and prometheus_client's ProcessCollector
    # silently exports nothing without the boot time it reads there
    assert "ProcSubset" not in svc


def test_aggregator_unit_has_descriptors_for_the_fleet() -> None:
    limit = int(one(service("fil-heartbeat-aggregator"), "LimitNOFILE"))
    # one descriptor per connection at the default connection cap, and room to spare
    assert limit >= AggregatorConfig().max_connections + 4096
    assert one(service("fil-heartbeat-aggregator"), "KillMode") == "mixed"


def test_default_files_land_in_the_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Environment=XDG_STATE_HOME=%S does (%S is /var/lib for system services)."""
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib")
    assert platformdirs.user_state_dir(STATE) == "/var/lib/fil-heartbeat"  # the agent's key
    _, config = parse_args(["run"], env={})
    assert config.identity_file == Path("/var/lib/fil-heartbeat/aggregator.key")
    assert config.state_db == Path("/var/lib/fil-heartbeat/aggregator.db")


# -- the runbooks -------------------------------------------------------------------------

_SYSTEMCTL = re.compile(
    r"\bsystemctl\s+(?:--\S+\s+)*"
    r"(?:status|start|stop|restart|reload|enable|disable|is-active|cat|edit|show)\s+"
    r"(?:--\S+\s+)*([A-Za-z0-9@_.-]+)"
)
_JOURNALCTL = re.compile(r"\bjournalctl\b[^`\n]*?\s-u\s*([A-Za-z0-9@_.-]+)")


def runbook_files() -> list[Path]:
    docs = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "grafana").rglob("*.md")]
    return [*docs, *(p for p in UNITS.iterdir() if p.is_file())]


def test_runbook_systemctl_commands_name_the_units() -> None:
    units = {p.stem for p in UNITS.glob("*.service")}
    assert units == set(SCRIPTS)
    named: list[tuple[str, str]] = []
    for path in runbook_files():
        text = path.read_text(encoding="utf-8")
        for match in [*_SYSTEMCTL.finditer(text), *_JOURNALCTL.finditer(text)]:
            named.append((str(path.relative_to(REPO)), match.group(1).removesuffix(".service")))
    assert named, "no systemctl command found: the patterns are wrong"
    assert any(where == "grafana/RUNBOOK.md" for where, _ in named)
    unknown = [(where, name) for where, name in named if name not in units]
    assert not unknown, f"systemctl/journalctl name units that packaging/systemd lacks: {unknown}"


# -- the wheel, installed -----------------------------------------------------------------


def package_files(root: Path) -> set[str]:
    """Every file of the packages under `root`, as wheel paths (bytecode caches aside)."""
    out = set()
    for package in PACKAGES:
        for path in (root / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.add(path.relative_to(root).as_posix())
    return out


@dataclass(frozen=True)
class Installed:
    venv: Path
    bin: Path
    wheel: Path
    site: Path
    tree_files: frozenset[str]


def run(
    args: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Not under the test command's coverage: the copies built and installed here are not
    # the tree it measures (they would count as other files, all unexecuted).
    clean = dict(os.environ if env is None else env)
    clean.pop("COVERAGE_PROCESS_START", None)
    return subprocess.run(
        args, capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=clean
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`pip wheel --no-deps` of a copy of the tree, installed with --no-deps --no-index into
    a fresh venv that finds the dependencies in the project venv's site-packages."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    tree_files = frozenset(package_files(src))
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(work / "dist"),
            str(src),
        ]
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("fil_heartbeat-*.whl")
    venv = work / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    # After the venv's own site-packages, and as a plain path: the project venv's .pth files
    # (its editable install of this tree) are not run.
    (site / "_fil_heartbeat_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ]
    )
    assert done.returncode == 0, done.stderr
    return Installed(venv, venv / "bin", wheel, site, tree_files)


@pytest.mark.integration
def test_the_wheel_holds_every_file_of_the_packages(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    missing = sorted(installed.tree_files - names)
    assert not missing, f"not in the wheel (pyproject.toml package-data?): {missing}"
    assert sorted(set(SCRIPTS)) == sorted(
        line.split("=")[0].strip()
        for line in zipfile.ZipFile(installed.wheel)
        .read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
        .decode()
        .splitlines()
        if "=" in line
    )
    assets = {n for n in installed.tree_files if not n.endswith(".py")}
    assert all((installed.site / name).is_file() for name in assets)


@pytest.mark.integration
def test_console_scripts_run_outside_the_tree(installed: Installed, tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("PYTHONPATH", None)
    where = run(
        [
            str(installed.bin / "python"),
            "-c",
            "import heartbeat, aggregator; print(heartbeat.__file__); print(aggregator.__file__)",
        ],
        cwd=elsewhere,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(installed.site)) for line in where.stdout.split())
    for script in SCRIPTS:
        helped = run([str(installed.bin / script), "--help"], cwd=elsewhere, env=env)
        assert helped.returncode == 0, helped.stderr
        assert helped.stdout.startswith(f"usage: {script} ")
    ids = {}
    for script, key in (
        ("fil-heartbeat", "agent.key"),
        ("fil-heartbeat-aggregator", "aggregator.key"),
    ):
        first = run([str(installed.bin / script), "id"], cwd=elsewhere, env=env)
        assert first.returncode == 0, first.stderr
        again = run([str(installed.bin / script), "id"], cwd=elsewhere, env=env)
        assert again.stdout == first.stdout  # the key was kept
        ids[script] = first.stdout.strip()
        assert re.fullmatch(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}", ids[script])
        path = tmp_path / "state" / STATE / key  # where the units' StateDirectory is
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ids["fil-heartbeat"] != ids["fil-heartbeat-aggregator"]
    assert list(elsewhere.iterdir()) == []  # nothing written to the working directory


WHEELHOUSE = REPO / "build" / "wheelhouse"  # scripts/setup: the lock's wheels


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_pipx_installs_the_wheel_and_its_commands_run_anywhere(
    installed: Installed, tmp_path: Path
) -> None:
    """`pipx install <wheel>` as the README says, offline: pipx makes its own venv and
    resolves the dependencies from the lock's wheels (scripts/setup downloads them)."""
    if not any(WHEELHOUSE.glob("libp2p-*.whl")):
        reason = f"no wheelhouse at {WHEELHOUSE}: run scripts/setup"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    home, bin_dir = tmp_path / "pipx", tmp_path / "bin"
    env = {
        **os.environ,
        "PIPX_HOME": str(home),
        "PIPX_BIN_DIR": str(bin_dir),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    env.pop("PYTHONPATH", None)
    pip_args = f"--no-index --find-links {WHEELHOUSE}"
    done = subprocess.run(
        [sys.executable, "-m", "pipx", "install", "--pip-args", pip_args, str(installed.wheel)],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        env={k: v for k, v in env.items() if k != "COVERAGE_PROCESS_START"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(SCRIPTS)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    version = run([str(bin_dir / "fil-heartbeat"), "--version"], cwd=elsewhere, env=env)
    assert version.returncode == 0 and version.stdout.startswith("fil-heartbeat "), version
    helped = run([str(bin_dir / "fil-heartbeat-aggregator"), "--help"], cwd=elsewhere, env=env)
    assert helped.returncode == 0 and "status-page" in helped.stdout, helped.stderr
    ident = run([str(bin_dir / "fil-heartbeat"), "id"], cwd=elsewhere, env=env)
    assert ident.returncode == 0 and ident.stdout.startswith("12D3KooW"), ident.stderr
    # its own venv under PIPX_HOME, not the project's
    assert (home / "venvs" / "fil-heartbeat").is_dir()
    assert list(elsewhere.iterdir()) == []


# -- the units, verified ------------------------------------------------------------------


def require_tool(name: str, package: str) -> str:
    """The tool's path; skip without it, or fail under CI=true (tests/promservers.py)."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"not installed: {name} (Debian package {package}); `scripts/setup --system`"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing tool is a broken set-up)", pytrace=False)
    pytest.skip(reason)


def installed_units(installed: Installed, into: Path) -> list[Path]:
    """Copies of the units with ExecStart= pointing at the installed console scripts."""
    into.mkdir()
    out = []
    for name in SCRIPTS:
        text = (UNITS / f"{name}.service").read_text(encoding="utf-8")
        text = text.replace(f"/usr/local/bin/{name} ", f"{installed.bin / name} ")
        assert str(installed.bin) in text
        (into / f"{name}.service").write_text(text, encoding="utf-8")
        out.append(into / f"{name}.service")
    return out


@pytest.mark.integration
def test_units_pass_systemd_analyze_verify(installed: Installed, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    units = installed_units(installed, tmp_path / "units")
    verified = run([analyze, "verify", *map(str, units)])
    ours = [line for line in verified.stderr.splitlines() if "fil-heartbeat" in line]
    # verify exits 0 on an unknown key or a misspelt syscall group, with a line on stderr
    assert verified.returncode == 0 and not ours, verified.stderr
    for unit in units:
        # exposure 0.0 (locked down) .. 10.0; systemd calls up to 2.0 "OK"
        scored = run([analyze, "security", "--offline=yes", "--threshold=20", str(unit)])
        assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr


@pytest.mark.integration
def test_units_reject_what_systemd_rejects(installed: Installed, tmp_path: Path) -> None:
    """The verify test above can fail: a misspelt option or a missing program is noticed."""
    analyze = require_tool("systemd-analyze", "systemd")
    (unit, _) = installed_units(installed, tmp_path / "units")
    text = unit.read_text(encoding="utf-8")
    unit.write_text(text.replace("ProtectHome=yes", "ProtectHomes=yes"), encoding="utf-8")
    assert "ProtectHomes" in run([analyze, "verify", str(unit)]).stderr
    unit.write_text(text.replace(str(installed.bin), "/nonexistent/bin"), encoding="utf-8")
    assert run([analyze, "verify", str(unit)]).returncode != 0


@pytest.mark.integration
def test_sysusers_file_is_valid(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    dry = run([sysusers, f"--root={tmp_path}", "--dry-run", str(UNITS / "fil-heartbeat.sysusers")])
    assert dry.returncode == 0, dry.stderr
    assert "Creating user 'fil-heartbeat'" in dry.stdout + dry.stderr
    assert list((tmp_path / "etc").iterdir()) == []  # a dry run
