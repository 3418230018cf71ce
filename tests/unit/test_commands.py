from asgi_fleet.commands import curl_args


def test_curl_reaches_a_wildcard_bind_on_loopback():
    assert curl_args("0.0.0.0:8000", "/healthz") == ["http://127.0.0.1:8000/healthz"]
    assert curl_args("[::]:8000", "/h") == ["http://[::1]:8000/h"]
    assert curl_args("10.1.2.3:80", "/h") == ["http://10.1.2.3:80/h"]


def test_curl_reaches_a_unix_socket():
    assert curl_args("unix:/run/shop.sock", "/h") == [
        "--unix-socket", "/run/shop.sock", "http://localhost/h"]
