import os
import subprocess

from asgi_fleet.commands import atomic_symlink, curl_args


def test_curl_reaches_a_wildcard_bind_on_loopback():
    assert curl_args("0.0.0.0:8000", "/healthz") == ["http://127.0.0.1:8000/healthz"]
    assert curl_args("[::]:8000", "/h") == ["http://[::1]:8000/h"]
    assert curl_args("10.1.2.3:80", "/h") == ["http://10.1.2.3:80/h"]


def test_curl_reaches_a_unix_socket():
    assert curl_args("unix:/run/shop.sock", "/h") == [
        "--unix-socket", "/run/shop.sock", "http://localhost/h"]


def test_atomic_symlink_replaces_the_link_by_rename(tmp_path):
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
    link = tmp_path / "current"
    for target in ("r1", "r2"):
        subprocess.run(["sh", "-c", atomic_symlink(str(link), target)], check=True, cwd=tmp_path)
        assert os.readlink(link) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "r1", "r2"]  # no leftovers
