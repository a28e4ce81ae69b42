"""Global.pretrained_model as an http(s) URL, against a real HTTP server on loopback."""
import hashlib
import http.server
import threading

import numpy as np
import paddle
import pytest

from trainer import weights

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, so the copy loop runs more than once


class Handler(http.server.BaseHTTPRequestHandler):
    requests = []

    def do_GET(self):
        Handler.requests.append(self.path)
        if self.path.startswith("/short/"):
            # Announces the whole file, sends half, hangs up: a dropped connection.
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        body = self.server.files.get(self.path.split("#")[0], PAYLOAD)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.requests.clear()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def leftovers(cache):
    return [p.name for p in cache.rglob("*") if p.is_file() and p.name != ".lock"]


def test_download_once_then_reuse_the_cache(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIMSIAM_CACHE_DIR", str(tmp_path))
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    first = weights.resolve(url(server, f"/w/model.pdparams#sha256={sha}"))
    assert first.read_bytes() == PAYLOAD and first.name == "model.pdparams"
    assert "downloading model.pdparams" in capsys.readouterr().err
    second = weights.resolve(url(server, f"/w/model.pdparams#sha256={sha}"))
    assert second == first and Handler.requests == ["/w/model.pdparams"]
    assert leftovers(tmp_path) == ["model.pdparams"]


def test_truncated_download_is_an_error_and_leaves_no_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSIAM_CACHE_DIR", str(tmp_path))
    with pytest.raises(weights.WeightsError, match="incomplete|failed after"):
        weights.resolve(url(server, "/short/model.pdparams"))
    assert leftovers(tmp_path) == []


def test_bad_sha256_is_an_error_and_leaves_no_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSIAM_CACHE_DIR", str(tmp_path))
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.resolve(url(server, "/w/model.pdparams#sha256=" + "0" * 64))
    assert leftovers(tmp_path) == []


def test_http_error_is_reported(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSIAM_CACHE_DIR", str(tmp_path))
    with pytest.raises(weights.WeightsError, match="HTTP 404"):
        weights.resolve(url(server, "/missing/model.pdparams"))
    assert leftovers(tmp_path) == []


def test_downloaded_state_dict_loads_into_a_model(server, tmp_path, monkeypatch):
    """The whole path: URL -> cache -> paddle.load -> model, with the recipe's file name."""
    monkeypatch.setenv("SIMSIAM_CACHE_DIR", str(tmp_path / "cache"))
    paddle.seed(0)
    source = paddle.nn.Sequential(paddle.nn.Linear(4, 3))
    paddle.save(source.state_dict(), str(tmp_path / "m.pdparams"))
    name = "/simsiam_resnet50_in1k_100ep_bz512_pretrained.pdparams"
    server.files[name] = (tmp_path / "m.pdparams").read_bytes()
    target = paddle.nn.Sequential(paddle.nn.Linear(4, 3))
    weights.load_into(target, url(server, name), with_head=True)
    np.testing.assert_array_equal(target[0].weight.numpy(), source[0].weight.numpy())
