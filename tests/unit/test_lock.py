"""The lock (constraints.txt): the environment the tests run in is the one `make setup` installs from it."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from yolo_compile import runs

LOCK = runs.REPO_ROOT / "constraints.txt"
NOT_FROZEN = {"pip", "setuptools", "wheel", "distribute", "yolo-compile"}  # what `pip freeze` leaves out


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{LOCK}: {line!r} is not a NAME==VERSION pin"
            pins[_canon(name)] = version.strip()
    return pins


@pytest.mark.skipif(not LOCK.is_file(), reason="not a checkout: constraints.txt ships with the repository only")
def test_installed_versions_are_the_locks():
    """A venv made by `make setup` (pip install -c constraints.txt) has exactly the lock's versions, nothing unpinned."""
    pins = _lock()
    installed = {_canon(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    drift = sorted(f"{n} {v} (lock: {pins[n]})" for n, v in installed.items() if n in pins and pins[n] != v)
    unpinned = sorted(f"{n} {v}" for n, v in installed.items() if n not in pins and n not in NOT_FROZEN)
    assert not drift, f"installed versions differ from constraints.txt: {', '.join(drift)}; run make setup (or make lock)"
    assert not unpinned, f"installed but not in constraints.txt: {', '.join(unpinned)}; run make lock"


def test_lock_pins_what_the_reference_frames_need():
    """The committed reference JPEGs were encoded by one opencv release: the lock holds that release."""
    import json

    made_with = json.loads((runs.REPO_ROOT / "data" / "aoi" / "manifest.json").read_text())["versions"]["opencv"]
    assert _lock()["opencv-python"].startswith(made_with + "."), "constraints.txt's opencv-python is not the one " \
        f"the reference frames were made with ({made_with}): regenerate them (scripts/make_reference.py --images)"


def test_the_manifest_records_the_lock(tmp_path):
    entry = runs.lock_entry()
    assert entry == {"file": "constraints.txt", "sha256": runs.sha256(LOCK)}
    runs.init_manifest(tmp_path, "default", {}, {})
    assert runs.read_manifest(tmp_path)["lock"]["sha256"] == entry["sha256"]
