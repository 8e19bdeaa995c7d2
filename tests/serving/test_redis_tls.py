"""A Redis that wants a password and speaks only TLS: loader, lookup (both paths) and events work
from the URL alone (rediss://:password@host:port/db?ssl_cert_reqs=none)."""

import shutil
import subprocess

import pytest
import redis
from fastapi.testclient import TestClient

from helpers import publish_sample
from nightrec.serving.api import create_app
from nightrec.serving.redis_server import free_port, wait_for_redis


@pytest.fixture(scope="module")
def tls_redis_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("redis-tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", "0", "--tls-port", str(port),
                             "--bind", "127.0.0.1",
                             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                             "--tls-auth-clients", "no", "--requirepass", "s3cret", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL)
    url = f"rediss://:s3cret@127.0.0.1:{port}/2?ssl_cert_reqs=none"
    wait_for_redis(proc, url)
    yield url
    proc.terminate()
    proc.wait(10)


def test_password_and_tls_come_from_the_url(tls_redis_url, make_settings):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(tls_redis_url.replace("s3cret", "wrong")).ping()
    published = publish_sample(tls_redis_url)
    with TestClient(create_app(make_settings(tls_redis_url))) as api:
        fast = api.get("/v1/users/2/recommendations?k=2").json()
        assert fast["version"] == published.version and [i["item_id"] for i in fast["items"]] == [2, 3]
        assert api.get("/v1/users/2/recommendations?k=%32").json()["items"] == fast["items"]  # the FastAPI path
        assert api.post("/v1/events", json={"user_id": 2, "item_id": 2, "event_type": "click"}).status_code == 202
        assert [i["item_id"] for i in api.get("/v1/users/2/recommendations?k=2").json()["items"]] == [3, 4]
    with TestClient(create_app(make_settings(tls_redis_url.replace("s3cret", "wrong")))) as api:
        assert api.get("/v1/users/2/recommendations").status_code == 503
