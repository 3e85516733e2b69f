"""`automl serve` as users run it: the real command (Ray Serve, embedded Ray) on 127.0.0.1, driven with http.client.

One server for the module (a tiny exported model, a bearer token, small limits so that the over-limit cases are
cheap); every bad upload must be a 4xx with one JSON line, and the server must answer the next good request.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import export_tiny_model

TOKEN = "test-token-0123456789abcdef"
MAX_UPLOAD_MB, MAX_IMAGES = 1, 4
START_TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _image_bytes(height: int, width: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A small PNG whose header claims width x height pixels (PIL refuses it as a decompression bomb)."""
    png = bytearray(_image_bytes(8, 8, "PNG"))
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR's width and height
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # and its CRC
    return bytes(png)


def _multipart(files: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in files)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``automl serve`` in its own process group: (base URL's port, model folder); stopped with Ctrl-C (SIGINT)."""
    scratch = tmp_path_factory.mktemp("serve")
    _, model_dir = export_tiny_model(scratch / "model")
    (scratch / "token").write_text(TOKEN + "\n")
    port = _free_port()
    command = [sys.executable, "-m", "automl", "serve", str(model_dir), "--port", str(port),
               "--token-file", str(scratch / "token"), "--max-upload-mb", str(MAX_UPLOAD_MB),
               "--max-images", str(MAX_IMAGES)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env=os.environ | {"RAY_ADDRESS": "local"})
    output = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        output.append(line)
        if line.startswith("serving "):
            break
    try:
        assert output and output[-1].startswith("serving ") and f"http://127.0.0.1:{port}" in output[-1], \
            "".join(output)
        yield port, model_dir
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0 and rest.rstrip().endswith("stopped"), rest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _request(port: int, method: str, path: str, body: bytes | None = None, content_type: str | None = "image/jpeg",
             token: str | None = TOKEN, chunked: bool = False) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one request on a new connection."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type is not None and body is not None:
        headers["Content-Type"] = content_type
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            connection.request(method, path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                               headers=headers | {"Transfer-Encoding": "chunked"}, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def _json(port: int, *args, **kwargs) -> tuple[int, dict]:
    status, kind, body = _request(port, *args, **kwargs)
    assert kind.startswith("application/json"), (status, kind, body[:200])
    return status, json.loads(body)


def test_one_image_answers_what_predict_answers(server, tmp_path):
    from automl.predict import classify_files

    port, model_dir = server
    for name, data in (("a.jpg", _image_bytes(112, 150)), ("b.png", _image_bytes(45, 60, "PNG", seed=1))):
        (tmp_path / name).write_bytes(data)
        status, answer = _json(port, "POST", "/predict", data, "image/png" if name.endswith("png") else "image/jpeg")
        assert status == 200, answer
        expected = classify_files(model_dir, [tmp_path / name]).iloc[0]
        assert answer["model"] == "test" and len(answer["version"]) == 12
        assert answer["predicted"] == expected["dx_pred"]
        assert list(answer["probabilities"]) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
        for cls, p in answer["probabilities"].items():
            assert p == pytest.approx(expected[f"p_{cls}"], abs=2e-6)
    # The raw body with no Content-Type, or application/octet-stream, is one image too.
    assert _json(port, "POST", "/predict", _image_bytes(30, 30), None)[0] == 200
    assert _json(port, "POST", "/predict", _image_bytes(30, 30), "application/octet-stream")[0] == 200


def test_several_images_in_one_request_each_with_its_answer(server):
    port, _ = server
    files = [("one.jpg", _image_bytes(112, 150)), ("two.png", _image_bytes(20, 30, "PNG")),
             ("broken.jpg", b"not an image"), ("three.jpg", _image_bytes(112, 150, seed=3))]
    status, answer = _json(port, "POST", "/predict", *_multipart(files))
    assert status == 200, answer
    results = answer["results"]
    assert [r["file"] for r in results] == [name for name, _ in files]
    assert results[2] == {"file": "broken.jpg", "error": "not an image PIL can read"}
    for result in (results[0], results[1], results[3]):
        assert result["predicted"] in result["probabilities"]
        assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    # The same image alone and within a batch of others: the same probabilities.
    alone = _json(port, "POST", "/predict", files[0][1])[1]
    assert alone["probabilities"] == pytest.approx(results[0]["probabilities"], abs=2e-6)


def test_multipart_as_clients_send_it(server):
    """The multipart body of a common HTTP client library (as curl -F sends it: a Content-Type per part)."""
    import requests

    port, _ = server
    files = [("image", ("x.jpg", _image_bytes(112, 150), "image/jpeg")),
             ("image", ("y.png", _image_bytes(40, 50, "PNG"), "image/png"))]
    response = requests.post(f"http://127.0.0.1:{port}/predict", files=files,
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 200, response.text
    assert [r["file"] for r in response.json()["results"]] == ["x.jpg", "y.png"]
    assert all("predicted" in r for r in response.json()["results"])


def test_model_card_and_health(server):
    port, _ = server
    status, kind, body = _request(port, "GET", "/")
    assert status == 200 and kind.startswith("text/markdown")
    assert body.decode().startswith("# test\n\nIntended use:") and "not diagnosis" in body.decode()
    status, kind, body = _request(port, "GET", "/", token=None)
    assert status == 401 and "bearer token" in json.loads(body)["error"]
    status, health = _json(port, "GET", "/healthz", token=None)  # probes need no token
    assert status == 200 and health["status"] == "ok" and health["model"] == "test"


def test_token_required_and_accepted(server):
    port, _ = server
    image = _image_bytes(28, 28)
    for token in (None, "wrong-token-0123456789"):
        status, answer = _json(port, "POST", "/predict", image, token=token)
        assert status == 401 and "Authorization: Bearer" in answer["error"]
    assert _json(port, "POST", "/predict", image)[0] == 200


def _truncated_jpeg() -> bytes:
    data = _image_bytes(112, 150)
    return data[: len(data) // 2]


BAD_INPUTS = {
    # case: (request arguments, expected status, words the error must contain)
    "empty body": ((b"",), {}, 400, "empty body"),
    "not an image": ((b"hello, world" * 10,), {}, 422, "not an image"),
    "truncated JPEG": ((_truncated_jpeg(),), {}, 422, "truncated"),
    "decompression bomb 30,000 x 30,000": ((_bomb_png(),), {"content_type": "image/png"}, 422, "too large"),
    "over the size limit": ((b"\xff" * (MAX_UPLOAD_MB * 1024 * 1024 + 1),), {}, 413, "over the limit"),
    "over the size limit, chunked": ((b"\xff" * (MAX_UPLOAD_MB * 1024 * 1024 + 1),), {"chunked": True}, 413,
                                     "over the limit"),
    "wrong content type": ((_image_bytes(28, 28),), {"content_type": "application/json"}, 415, "Content-Type"),
    "too many images": (_multipart([(f"{i}.jpg", _image_bytes(8, 8)) for i in range(MAX_IMAGES + 1)]), {}, 413,
                        "images in one request"),
    "multipart without boundary": ((b"--x\r\n\r\n",), {"content_type": "multipart/form-data"}, 400, "boundary"),
    "multipart cut short": ((_multipart([("a.jpg", _image_bytes(8, 8))])[0][:-20],
                             "multipart/form-data; boundary=b0undary"), {}, 400, "closing boundary"),
    "multipart, no part an image": (_multipart([("a.txt", b"text"), ("b.jpg", b"")]), {}, 422, "none of the parts"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_json_line_and_the_server_goes_on(server, case):
    port, _ = server
    args, kwargs, expected_status, words = BAD_INPUTS[case]
    if len(args) == 2:
        kwargs = kwargs | {"content_type": args[1]}
    status, kind, body = _request(port, "POST", "/predict", args[0], **kwargs)
    assert (status, kind.split(";")[0]) == (expected_status, "application/json"), body[:300]
    assert b"\n" not in body.strip() and list(json.loads(body)) == ["error"]
    assert words in json.loads(body)["error"]
    assert _json(port, "POST", "/predict", _image_bytes(112, 150))[0] == 200  # the next good request


def test_unknown_paths_and_methods_are_404_and_405(server):
    port, _ = server
    assert _json(port, "GET", "/nothing")[0] == 404
    assert _json(port, "GET", "/predict")[0] == 405
    assert _json(port, "POST", "/healthz", b"x")[0] == 405


def test_a_host_other_machines_reach_needs_a_token(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"")  # never read: the host is refused first
    result = subprocess.run([sys.executable, "-m", "automl", "serve", str(tmp_path), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--host 0.0.0.0" in result.stderr and "--token-file" in result.stderr
