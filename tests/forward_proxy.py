"""A small HTTP forward proxy on loopback, for tests of a site behind HTTP_PROXY / HTTPS_PROXY.

It takes requests in absolute form (`GET http://host:port/path HTTP/1.1`), forwards each on a
connection of its own to the origin (origin form, `Connection: close`) and relays the response
back, with `Connection: close` so the client does not reuse the connection; and `CONNECT
host:port` for https, relayed as a tunnel both ways. It counts what it carried in `forwarded`:
each request as (method, absolute URL), each tunnel as ("CONNECT", "host:port").
"""

import select
import socket
import socketserver
import threading
from collections.abc import Callable
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self) -> None:
        self.forwarded: list[tuple[str, str]] = []
        self._changed = threading.Condition()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.connection, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ForwardProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def _note(self, method: str, target: str) -> None:
        with self._changed:
            self.forwarded.append((method, target))
            self._changed.notify_all()

    def _serve(self, client: socket.socket, rfile) -> None:
        head = [rfile.readline(65537)]
        while head[-1] not in (b"\r\n", b"\n", b""):
            head.append(rfile.readline(65537))
        method, target, version = head[0].decode("latin-1").split()
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            self._note(method, target)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            # The client sends nothing more before this answer: nothing is left in `rfile`'s buffer.
            self._relay(client, upstream)
            return
        parts = urlsplit(target)
        upstream = socket.create_connection((parts.hostname, parts.port or 80))
        self._note(method, target)
        lines = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} {version}\r\n".encode()]
        length = 0
        for line in head[1:-1]:
            name = line.split(b":", 1)[0].strip().lower()
            if name == b"content-length":
                length = int(line.split(b":", 1)[1])
            if name not in (b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization"):
                lines.append(line)
        lines.append(b"Connection: close\r\n\r\n")
        upstream.sendall(b"".join(lines) + (rfile.read(length) if length else b""))
        # The response's head gets `Connection: close` too: this connection carries one request.
        response = upstream.makefile("rb")
        status = response.readline(65537)
        client.sendall(status + b"Connection: close\r\n")
        while (line := response.readline(65537)) not in (b"\r\n", b"\n", b""):
            if line.split(b":", 1)[0].strip().lower() != b"connection":
                client.sendall(line)
        client.sendall(b"\r\n")
        while data := response.read1(65536):
            client.sendall(data)
        upstream.close()

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket) -> None:
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 60)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()
