"""``automl serve``: an exported model folder behind HTTP on Ray Serve.

``POST /predict`` takes one image (the raw bytes as the body) or several (``multipart/form-data``, one image per
part) and answers JSON with the class probabilities and the predicted class; ``GET /`` is the model card and
``GET /healthz`` says the replica is up. Images are decoded by :func:`automl.data.decode_image` and classified by
:func:`automl.predict.classify_images`, the same code as ``automl predict``, so the server sees exactly the pixels
``predict`` sees. Requests arriving together are classified together (``@serve.batch``), grouped by image size
because the exported graph resizes one size per batch.

Every bad request is a 4xx with one JSON line ``{"error": "..."}``; nothing a client sends answers 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import ipaddress
import socket
import time
from dataclasses import asdict, dataclass
from email.message import Message
from pathlib import Path

import numpy as np

from ray import serve

from automl.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
APP_NAME = "automl"
#: Image content types are ``image/*``; these two also mean "the body is one image file".
RAW_TYPES = ("application/octet-stream", "")


@dataclass(frozen=True)
class ServeSettings:
    """What a served model accepts and how it scales; the defaults suit one 2-core machine (each replica's
    TensorFlow already uses every core, so one replica; batches of up to 32 requests)."""

    max_upload_mb: float = 20.0
    max_images: int = 16
    max_batch_size: int = 32
    batch_wait_ms: float = 30.0  # at 5 ms batches held 1-2 images under 32 clients, at 30 ms 5-6 (and 1.6x req/s)
    replicas: int = 1
    max_replicas: int = 0  # above replicas: autoscale between the two
    target_ongoing_requests: int = 16
    max_ongoing_requests: int = 64
    replica_cpus: float = 1.0
    request_timeout_s: float = 30.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> None:
        """A UserError naming the first flag whose value cannot work."""
        positive = {"--max-upload-mb": self.max_upload_mb, "--max-images": self.max_images,
                    "--max-batch-size": self.max_batch_size, "--replicas": self.replicas,
                    "--target-ongoing-requests": self.target_ongoing_requests,
                    "--max-ongoing-requests": self.max_ongoing_requests, "--request-timeout": self.request_timeout_s}
        for flag, value in positive.items():
            if not value > 0:
                raise UserError(f"{flag} {value}: must be more than 0")
        if self.batch_wait_ms < 0 or self.replica_cpus < 0:
            raise UserError("--batch-wait-ms and --replica-cpus must not be negative")
        if self.max_replicas and self.max_replicas < self.replicas:
            raise UserError(f"--max-replicas {self.max_replicas}: less than --replicas {self.replicas}")

    def deployment_options(self) -> dict:
        """Ray Serve's options for the model deployment: fixed replicas, or autoscaling when --max-replicas is more."""
        # The handler never blocks its event loop (decoding and the model run in threads), so it runs on the
        # replica's own loop rather than a second one: measured 15-20% more requests/s at 32 clients on 2 cores.
        same_loop = {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}
        options = {"max_ongoing_requests": self.max_ongoing_requests, "max_constructor_retry_count": 3,
                   "ray_actor_options": {"num_cpus": self.replica_cpus, "runtime_env": same_loop}}
        if self.max_replicas > self.replicas:
            options["autoscaling_config"] = {"min_replicas": self.replicas, "initial_replicas": self.replicas,
                                             "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        else:
            options["num_replicas"] = self.replicas
        return options


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_token(token_file: Path | None, host: str) -> str | None:
    """The bearer token clients must send, from ``--token-file``; required when ``host`` is not loopback."""
    if token_file is None:
        if not is_loopback(host):
            raise UserError(f"--host {host}: other machines can reach it; pass --token-file with a bearer token "
                            "clients must send (e.g. made by: python -c 'import secrets; print(secrets.token_hex())')")
        return None
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise UserError(f"--token-file {token_file}: cannot read it ({exc.strerror})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserError(f"--token-file {token_file}: the token must be one word of at least 16 characters")
    return token


def check_port_free(host: str, port: int) -> None:
    """Fail in one line when something already listens at host:port (Serve's proxy would retry for long)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
                            "choose another --port") from None


def model_version(model_dir: Path) -> str:
    """The served model's version: the first 12 hex digits of model.keras's SHA-256 (changes with any weight)."""
    from automl.layout import ModelLayout

    digest = hashlib.sha256()
    with open(ModelLayout(model_dir).keras_file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class BadRequest(Exception):
    """A request the server refuses: its HTTP status and the one-line reason sent back as JSON."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def header_value(header: str) -> tuple[str, dict[str, str]]:
    """A MIME header's value (lower case) and its parameters, as the email package reads them."""
    message = Message()
    message["content-type"] = header
    params = {k.lower(): v for k, v in message.get_params(failobj=[], header="content-type")[1:]}
    return header.split(";")[0].strip().lower(), params


def split_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The parts of a ``multipart/form-data`` body as ``(name, bytes)``: the part's file name, else its field name."""
    boundary = header_value(content_type)[1].get("boundary")
    if not boundary:
        raise BadRequest(400, "multipart/form-data without a boundary parameter in Content-Type")
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    parts = []
    for section in sections[1:]:
        if section.startswith(b"--"):  # the closing delimiter
            return parts
        head, found, content = section.partition(b"\r\n\r\n")
        if not found:
            raise BadRequest(400, f"multipart part {len(parts) + 1}: no blank line after its headers")
        disposition = ""
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value.strip()
        params = header_value(f"form-data; {disposition.partition(';')[2]}")[1] if disposition else {}
        parts.append((params.get("filename") or params.get("name") or f"part {len(parts) + 1}", content))
    raise BadRequest(400, "multipart body without its closing boundary (truncated upload?)")


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class ModelServer:
    """One Serve replica: the exported model, its card, and the HTTP handling (a deployment by :func:`app`)."""

    def __init__(self, model_dir: str, settings: dict, token: str | None):
        from automl.console import import_tensorflow_quietly
        from automl.layout import ModelLayout
        from automl.predict import classify_images, load_model, model_classes

        model_dir = resolve_model_dir(model_dir)
        import_tensorflow_quietly()
        self.settings = ServeSettings(**settings)
        self.classes = model_classes(model_dir)
        self.model = load_model(model_dir, len(self.classes))
        layout = ModelLayout(model_dir)
        self.card = layout.read_card()
        self.card_md = layout.card_md.read_text() if layout.card_md.is_file() else None
        self.about = {"model": self.card.get("name", model_dir.name), "version": model_version(model_dir)}
        classify_images(self.model, [np.zeros((8, 8, 3), np.uint8)])  # traces the graph: the first request is not slow
        self.token = token
        self._classify.set_max_batch_size(self.settings.max_batch_size)
        self._classify.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1000)

    async def __call__(self, request):
        try:
            return await self._route(request)
        except BadRequest as exc:
            return _error(exc.status, str(exc))

    async def _route(self, request):
        from starlette.responses import JSONResponse, PlainTextResponse

        path = request.url.path.rstrip("/") or "/"
        routes = {"/": "GET", "/healthz": "GET", "/predict": "POST"}
        if path not in routes:
            raise BadRequest(404, f"{path}: no such endpoint (GET /, GET /healthz, POST /predict)")
        if request.method != routes[path]:
            raise BadRequest(405, f"{request.method} {path}: use {routes[path]} {path}")
        if path == "/healthz":  # for load balancers and probes: says nothing about the model beyond its name
            return JSONResponse({"status": "ok", **self.about})
        self._check_token(request)
        if path == "/":
            if "application/json" in request.headers.get("accept", "") or self.card_md is None:
                return JSONResponse(self.about | {"card": self.card})
            return PlainTextResponse(self.card_md, media_type="text/markdown; charset=utf-8")
        return JSONResponse(await self._predict(request))

    def _check_token(self, request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise BadRequest(401, "missing or wrong bearer token: send the header Authorization: Bearer <token>")

    async def _read_body(self, request) -> bytes:
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest(400, f"Content-Length {declared!r}: not a byte count")
            if int(declared) > limit:
                raise BadRequest(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes")
        body = bytearray()
        async for chunk in request.stream():  # a chunked upload has no Content-Length: counted as it arrives
            body += chunk
            if len(body) > limit:
                raise BadRequest(413, f"upload over the limit of {limit:,} bytes")
        if not body:
            raise BadRequest(400, "empty body: send an image file as the body, or several as multipart/form-data")
        return bytes(body)

    async def _predict(self, request) -> dict:
        from automl.data import decode_image

        kind = header_value(request.headers.get("content-type", ""))[0]
        multipart = kind == "multipart/form-data"
        if not (multipart or kind.startswith("image/") or kind in RAW_TYPES):
            raise BadRequest(415, f"Content-Type {kind}: send an image (image/jpeg, image/png, ... or "
                                  "application/octet-stream) or several as multipart/form-data")
        body = await self._read_body(request)
        uploads = split_multipart(body, request.headers["content-type"]) if multipart else [("image", body)]
        if not uploads:
            raise BadRequest(400, "multipart/form-data with no parts: send one image per part")
        if len(uploads) > self.settings.max_images:
            raise BadRequest(413, f"{len(uploads)} images in one request; at most {self.settings.max_images}")
        images: list = []
        for name, data in uploads:
            if not data:
                images.append(ValueError("empty part"))
                continue
            try:  # decoding a large image takes a while: off the event loop, which serves the other requests
                images.append(await asyncio.to_thread(decode_image, io.BytesIO(data)))
            except ValueError as exc:
                images.append(exc)
        if not multipart:
            if isinstance(images[0], ValueError):
                raise BadRequest(422, f"the body is not an image automl can read: {images[0]}")
            return self.about | self._answer(await self._classify(images[0]))
        decoded = [image for image in images if not isinstance(image, ValueError)]
        if not decoded:
            raise BadRequest(422, "none of the parts is an image automl can read: " +
                             "; ".join(f"{name}: {image}" for (name, _), image in zip(uploads, images)))
        probs = iter(await asyncio.gather(*(self._classify(image) for image in decoded)))
        results = [{"file": name, "error": str(image)} if isinstance(image, ValueError)
                   else {"file": name} | self._answer(next(probs)) for (name, _), image in zip(uploads, images)]
        return self.about | {"results": results}

    def _answer(self, probs) -> dict:
        return {"predicted": self.classes[int(probs.argmax())],
                "probabilities": {name: round(float(p), 6) for name, p in zip(self.classes, probs)}}

    @serve.batch
    async def _classify(self, images: list) -> list:
        """Decoded images of concurrent requests, classified together (batch size and wait set in ``__init__``)."""
        from automl.predict import classify_images

        return list(await asyncio.to_thread(classify_images, self.model, images))


def resolve_model_dir(model_dir: str) -> Path:
    """A model folder as a local path: a URI is pulled into a local copy (without its evaluations)."""
    from automl.remote import Location, is_uri, pulled

    if not is_uri(model_dir):
        return Path(model_dir)
    return pulled(Location.parse(model_dir, "MODEL_DIR"), "model", lambda relative: relative.startswith("evaluations/"))


def app(model_dir: str, settings: ServeSettings, token: str | None):
    """The Serve application: :class:`ModelServer` as a deployment, batching across requests."""
    deployment = serve.deployment(ModelServer, name="model").options(**settings.deployment_options())
    return deployment.bind(model_dir, asdict(settings), token)


def start(model_dir: str, settings: ServeSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, ray_address: str | None = None) -> str:
    """Start Ray (embedded, or the cluster at ``ray_address``), Serve's HTTP proxy on host:port and the model;
    return the URL once every replica has loaded the model."""
    import logging

    from automl.search import start_ray

    start_ray(ray_address)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": settings.request_timeout_s},
                logging_config={"log_level": logging.WARNING, "enable_access_log": False})
    try:
        serve.run(app(model_dir, settings, token), name=APP_NAME, route_prefix="/")
    except Exception as exc:  # noqa: BLE001 - Serve says only "failed"; the replica's own error is in its status
        reason = _replica_error() or str(exc).strip().splitlines()[0]
        stop()
        raise UserError(f"the model's replicas did not start: {reason}") from None
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _replica_error() -> str | None:
    """The last line of a failed replica's traceback (a UserError naming the model file, usually), from Serve."""
    try:
        deployments = serve.status().applications[APP_NAME].deployments
    except Exception:  # noqa: BLE001 - no status to read: the caller falls back on Serve's own message
        return None
    lines = [line.strip() for d in deployments.values() for line in (d.message or "").splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line]
    last = (named or lines or [None])[-1]
    return last.split("UserError: ", 1)[-1] if last else None  # our own errors are one line already


def stop() -> None:
    """Shut Serve down and leave Ray (an embedded Ray ends with it)."""
    import ray

    serve.shutdown()
    ray.shutdown()


def serve_forever(model_dir: str, settings: ServeSettings, host: str, port: int, token: str | None,
                  ray_address: str | None) -> None:
    """``automl serve``: start, print the URL, block until Ctrl-C (or SIGTERM), then shut down."""
    settings.check()
    check_port_free(host, port)
    url = start(model_dir, settings, host, port, token, ray_address)
    print(f"serving {model_dir} at {url} (POST {url}/predict, GET {url}/ the model card, GET {url}/healthz"
          f"{'; bearer token required' if token else ''}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    print("stopped", flush=True)
