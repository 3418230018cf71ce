"""The wheelhouse: platforms, the lock read as a host would, and pip
downloading for real (from a local find-links directory, offline)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from asgi_fleet.commands import AppPaths, before_planning, parse_before_planning
from asgi_fleet.facts import BeforePlanning
from asgi_fleet.onhost.agent import VENV_MARKER
from asgi_fleet.wheelhouse import (
    Platform, Wheelhouse, WheelhouseError, parse_platform, requirements_for,
)

BOOKWORM = Platform("3.11.2", "x86_64", "2.36")
TRIXIE = Platform("3.13.5", "x86_64", "2.41")


def test_each_debian_release_is_its_own_platform_and_runs_every_older_manylinux():
    assert BOOKWORM.key == "cp311-manylinux_2_36_x86_64" != TRIXIE.key
    tags = BOOKWORM.manylinux_tags()
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags  # built for a newer glibc: would not load
    assert {"manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    options = TRIXIE.pip_download_options()
    assert options[:1] == ["--only-binary=:all:"]
    assert options[options.index("--python-version") + 1] == "3.13" and options[options.index("--abi") + 1] == "cp313"


LOCK = """\
# via uv
anyio==4.9.0 \\
    --hash=sha256:aaaa
tomli==2.2.1 ; python_full_version < '3.12' \\
    --hash=sha256:bbbb \\
    --hash=sha256:cccc
    # via pytest
uvloop==0.23.0 ; platform_python_implementation != 'PyPy' and sys_platform != 'win32' \\
    --hash=sha256:dddd
colorama==0.4.6 ; sys_platform == 'win32' \\
    --hash=sha256:eeee
newer==1.0 ; python_version >= '3.13' \\
    --hash=sha256:ffff
"""


def names(text: str) -> list[str]:
    return [line.split("==")[0] for line in text.splitlines()]


def test_the_lock_is_read_for_the_host_not_for_the_controller():
    """pip download evaluates markers on the machine it runs on; the host's
    Python decides here, and what applies is kept with every hash."""
    assert names(requirements_for(LOCK, BOOKWORM)) == ["anyio", "tomli", "uvloop"]
    assert names(requirements_for(LOCK, TRIXIE)) == ["anyio", "uvloop", "newer"]
    kept = requirements_for(LOCK, BOOKWORM).splitlines()
    assert kept[1] == "tomli==2.2.1 --hash=sha256:bbbb --hash=sha256:cccc"
    assert not any(";" in line for line in kept)


def test_a_bare_host_gets_debians_python_and_an_unknown_one_is_refused_naming_the_way_out():
    bare = ["online 2", "machine x86_64", "glibc 2.36", "debian bookworm"]
    assert parse_platform(bare, "web1") == Platform("3.11", "x86_64", "2.36")
    assert parse_platform(bare + ["python 3.11.2"], "web1").key == BOOKWORM.key
    with pytest.raises(WheelhouseError, match="web9: wheelhouse: the host has no python3 yet.*wheelhouse=False"):
        parse_platform(["machine x86_64", "glibc 2.41", "debian forky"], "web9")


@given(st.text(max_size=40))
def test_a_hostile_probe_line_never_becomes_a_platform_it_does_not_spell(value):
    lines = [f"machine {value}", "glibc 2.36", "python 3.11.2"]
    try:
        platform = parse_platform(lines, "web1")
    except WheelhouseError as error:
        assert "set wheelhouse=False" in str(error)
    else:
        assert platform.machine == value.strip() and platform.machine.isascii()
        assert all(c.isalnum() or c == "_" for c in platform.machine)


def test_the_fact_reads_this_machines_platform_with_its_resources():
    script = BeforePlanning().command(apps=(AppPaths("asgi-fleet-nobody-has-this", "/srv"),))
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    probed, foreign = parse_before_planning(run.stdout.splitlines())
    platform = parse_platform(probed, "here")
    here = subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout.split()[1]
    assert platform.python == here and platform.machine == subprocess.check_output(["uname", "-m"], text=True).strip()
    assert foreign == {"asgi-fleet-nobody-has-this": []}
    assert before_planning("true", ()).endswith("true")


def a_wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel, made by hand."""
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            z.writestr(path, text)
    return wheel


@pytest.fixture
def offline_index(tmp_path, monkeypatch):
    """pip finds packages only in a local directory: no index is asked."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("ASGI_FLEET_CACHE", str(tmp_path / "cache"))
    return links


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wheelhouse_is_downloaded_once_per_lock_and_platform_with_the_locks_hashes(tmp_path, offline_index):
    wheel = a_wheel(offline_index, "tinydep", "1.0")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"tinydep==1.0 \\\n    --hash=sha256:{sha256(wheel)}\n"
                    f"colorama==0.4.6 ; sys_platform == 'win32' \\\n    --hash=sha256:{'0' * 64}\n")
    tar = Wheelhouse(lock, BOOKWORM).tarball()
    with tarfile.open(tar) as t:
        assert t.getnames() == [wheel.name]
        assert hashlib.sha256(t.extractfile(wheel.name).read()).hexdigest() == sha256(wheel)
    listing = json.loads((tar.parent / "wheels.json").read_text())
    assert listing["wheels"] == {wheel.name: sha256(wheel)} and listing["platform"] == BOOKWORM.key
    # the second ask is the cache's; another platform is its own download
    assert Wheelhouse(lock, BOOKWORM).tarball() == tar
    Wheelhouse(lock, TRIXIE).tarball()
    log = (tmp_path / "cache" / "wheelhouse" / "downloads.log").read_text().splitlines()
    assert [line.split()[1].split("-", 1)[1] for line in log] == [BOOKWORM.key, TRIXIE.key]
    assert sorted(p.name for p in (tmp_path / "cache" / "wheelhouse").iterdir()) == sorted(
        ["downloads.log", Wheelhouse(lock, BOOKWORM).key, Wheelhouse(lock, TRIXIE).key])


def test_a_wheel_that_does_not_match_the_locks_hash_is_refused(tmp_path, offline_index):
    a_wheel(offline_index, "tinydep", "1.0")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"tinydep==1.0 \\\n    --hash=sha256:{'1' * 64}\n")
    with pytest.raises(WheelhouseError, match="pip download failed.*wheelhouse=False"):
        Wheelhouse(lock, BOOKWORM).tarball()
    assert not (tmp_path / "cache" / "wheelhouse" / Wheelhouse(lock, BOOKWORM).key).exists()
    assert [p.name for p in (tmp_path / "cache" / "wheelhouse").iterdir()] == []  # no half-made one left


AGENT = Path(__file__).resolve().parents[2] / "asgi_fleet" / "onhost" / "agent.py"
REAL_UV = Path(sys.executable).with_name("uv")  # the controller's, pinned in pyproject.toml


def a_uv_wheel(directory: Path, script: str) -> Path:
    """A wheel shaped like uv's: its binary in uv-VERSION.data/scripts/uv."""
    wheel = directory / "uv-9.9-py3-none-manylinux_2_17_x86_64.whl"
    files = {"uv-9.9.data/scripts/uv": script,
             "uv-9.9.dist-info/METADATA": "Metadata-Version: 2.1\nName: uv\nVersion: 9.9\n",
             "uv-9.9.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                                       "Tag: py3-none-manylinux_2_17_x86_64\n"}
    record = "".join(f"{path},,\n" for path in files) + "uv-9.9.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in {**files, "uv-9.9.dist-info/RECORD": record}.items():
            z.writestr(path, text)
    return wheel


def build_venv(tmp_path: Path, lock: Path, shipped_from: Path | None = None,
               **request) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """The agent's `venv` run for real, on the wheelhouse of `lock` (or of
    `shipped_from`) shipped beside the venv, with a closed port on loopback
    as the index."""
    venv = tmp_path / "venvs" / "0123"
    venv.parent.mkdir(exist_ok=True)
    shipped = Path(f"{venv}.wheels.tar")
    shipped.write_bytes(Wheelhouse(shipped_from or lock, BOOKWORM).tarball().read_bytes())
    request = {"venv": str(venv), "lock": str(lock), "wheels": str(shipped),
               "index_url": "http://127.0.0.1:9/simple", "modules": []} | request
    env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, str(AGENT), "venv", json.dumps(request)],
                         capture_output=True, text=True, timeout=300, env=env)
    return venv, json.loads(run.stdout), run


def test_a_host_builds_its_virtualenv_with_uv_from_the_wheelhouse_with_its_index_unreachable(
        tmp_path, offline_index):
    """The wheelhouse carries uv's wheel (here one whose binary runs the real
    uv, and tells it ran): the agent takes uv out of it and installs offline,
    hash-checked, bytecode compiled (the app's user cannot write .pyc files)."""
    ran = tmp_path / "uv-ran"
    uv_wheel = a_uv_wheel(offline_index, f"#!/bin/sh\ntouch {ran}\nexec {REAL_UV} \"$@\"\n")
    wheel = a_wheel(offline_index, "tinydep", "1.0")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"tinydep==1.0 \\\n    --hash=sha256:{sha256(wheel)}\n"
                    f"uv==9.9 \\\n    --hash=sha256:{sha256(uv_wheel)}\n")
    venv = tmp_path / "venvs" / "0123"
    venv.parent.mkdir()
    Path(f"{venv}.asgi_fleet_worker.py").write_text("WORKER = 1\n")
    venv, answer, run = build_venv(tmp_path, lock, modules=["asgi_fleet_worker"])
    assert run.returncode == 0 and answer["outcome"] == "built", run.stderr
    assert answer["installer"] == "uv" and ran.exists()
    assert subprocess.check_output([venv / "bin/python", "-c", "import tinydep, asgi_fleet_worker; "
                                    "print(tinydep.VALUE, asgi_fleet_worker.WORKER)"], text=True).split() == ["1", "1"]
    site = next(venv.glob("lib/python3*/site-packages"))
    assert list(site.glob("__pycache__/tinydep.*.pyc")) and list(site.glob("__pycache__/asgi_fleet_worker.*.pyc"))
    assert not (venv / "bin" / "pip").exists()
    assert [p for p in venv.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o002] == []  # root's only
    marker = (venv / VENV_MARKER).read_text().split()
    assert marker[0] == sha256(lock) and len(marker) == 2
    assert sorted(p.name for p in venv.parent.iterdir()) == ["0123"]  # the tar, its unpacking, uv: gone


def test_a_uv_wheel_the_lock_does_not_admit_is_never_run_and_pip_installs_instead(tmp_path, offline_index):
    ran = tmp_path / "uv-ran"
    a_uv_wheel(offline_index, f"#!/bin/sh\ntouch {ran}\nexit 1\n")  # not in the lock: any such file
    wheel = a_wheel(offline_index, "tinydep", "1.0")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"tinydep==1.0 \\\n    --hash=sha256:{sha256(wheel)}\n")
    venv, answer, run = build_venv(tmp_path, lock)
    assert run.returncode == 0 and answer["outcome"] == "built", run.stderr
    assert answer["installer"] == "pip" and not ran.exists()
    assert subprocess.check_output([venv / "bin/python", "-c", "import tinydep; print(tinydep.VALUE)"],
                                   text=True).strip() == "1"
    assert sorted(p.name for p in venv.parent.iterdir()) == ["0123"]


def test_a_failed_install_says_why_and_leaves_no_complete_virtualenv(tmp_path, offline_index):
    wheel = a_wheel(offline_index, "tinydep", "1.0")
    shipped = tmp_path / "shipped.lock"
    shipped.write_text(f"tinydep==1.0 \\\n    --hash=sha256:{sha256(wheel)}\n")
    lock = tmp_path / "requirements.lock"
    lock.write_text(shipped.read_text() + f"otherdep==2.0 \\\n    --hash=sha256:{'2' * 64}\n")  # not shipped
    venv, answer, run = build_venv(tmp_path, lock, shipped_from=shipped, uv=str(REAL_UV))
    assert run.returncode == 1 and answer["outcome"] == "failed" and answer["installer"] == "uv"
    assert "otherdep" in "\n".join(answer["said"]) and "uv pip failed" in answer["said"][-1]
    assert not (venv / VENV_MARKER).exists()
    assert sorted(p.name for p in venv.parent.iterdir()) == ["0123"]


def test_a_prefetched_wheelhouse_downloads_once_in_the_background_and_tarball_takes_it(tmp_path, offline_index):
    wheel = a_wheel(offline_index, "prefetched", "1.0")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"prefetched==1.0 \\\n    --hash=sha256:{sha256(wheel)}\n")
    house = Wheelhouse(lock, BOOKWORM)
    house.prefetch()
    house.prefetch()  # the same key: the one download goes on
    with tarfile.open(house.tarball()) as t:
        assert t.getnames() == [wheel.name]
    house.prefetch()  # in the cache now: nothing to fetch
    assert house.tarball() == house.directory / "wheels.tar"
    log = (tmp_path / "cache" / "wheelhouse" / "downloads.log").read_text().splitlines()
    assert len(log) == 1 and house.key in log[0]


def test_a_prefetch_that_fails_fails_the_tarball_with_pips_words(tmp_path, offline_index):
    a_wheel(offline_index, "prefetched", "1.0")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"prefetched==1.0 \\\n    --hash=sha256:{'3' * 64}\n")
    house = Wheelhouse(lock, BOOKWORM)
    house.prefetch()
    with pytest.raises(WheelhouseError, match="pip download failed.*wheelhouse=False"):
        house.tarball()
    assert not house.directory.exists()
