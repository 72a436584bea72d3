"""A small fault-injecting TCP proxy for the tests, put in front of the moto S3 server.

Each accepted connection is forwarded to the upstream, unless a fault is armed: then the
next `count` connections (count=None: every one) get that fault instead:
- "reset":   forward the request, send half of the answer, then reset the connection (RST);
- "slowdown": answer `503 SlowDown` (an S3 XML error) without contacting the upstream;
- "stall":   read the request and send nothing for `stall_s` seconds, then close;
- "cut_upload": forward only half of the request body upstream, then reset both sides.
`seen` counts the faults injected, so a test can report how many retries it took.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s")
SLOWDOWN_BODY = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                 b"<Message>Please reduce your request rate.</Message></Error>")


def _reset(sock: socket.socket) -> None:
    try:  # SO_LINGER 0: close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _read_request(sock: socket.socket) -> bytes:
    """The request head plus whatever body arrives within a short wait."""
    sock.settimeout(2.0)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


class FaultProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind((host, 0))
        self._srv.listen(64)
        self.port = self._srv.getsockname()[1]
        self.endpoint = f"http://{host}:{self.port}"
        self._lock = threading.Lock()
        self._fault: str | None = None
        self._left: int | None = 0
        self.stall_s = 5.0
        self.seen = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, fault: str | None, count: int | None = 1, stall_s: float = 5.0) -> None:
        with self._lock:
            self._fault, self._left, self.stall_s = fault, count, stall_s

    def clear(self) -> None:
        self.arm(None, 0)

    def _take(self) -> str | None:
        with self._lock:
            if self._fault is None or self._left == 0:
                return None
            if self._left is not None:
                self._left -= 1
            self.seen += 1
            return self._fault

    def close(self) -> None:
        self._stop = True
        self._srv.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client, self._take()), daemon=True).start()

    def _handle(self, client: socket.socket, fault: str | None) -> None:
        try:
            if fault == "slowdown":
                _read_request(client)
                client.sendall(SLOWDOWN % (len(SLOWDOWN_BODY), SLOWDOWN_BODY))
                client.close()
                return
            if fault == "stall":
                _read_request(client)
                time.sleep(self.stall_s)
                client.close()
                return
            up = socket.create_connection(self.upstream)
            if fault == "cut_upload":
                head = _read_request(client)
                up.sendall(head[: max(len(head) // 2, 1)])
                _reset(up)
                _reset(client)
                return
            if fault == "reset":
                up.sendall(_read_request(client))
                up.settimeout(5.0)
                answer = b""
                try:
                    while len(answer) < 64:
                        chunk = up.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                except OSError:
                    pass
                client.sendall(answer[: len(answer) // 2])
                _reset(client)
                up.close()
                return
            self._pipe(client, up)
        except OSError:
            client.close()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        def one_way(src, dst):
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=one_way, args=(b, a), daemon=True)
        t.start()
        one_way(a, b)
        t.join()
        a.close()
        b.close()
