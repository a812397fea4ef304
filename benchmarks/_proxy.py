"""A TCP forwarder on loopback that adds a fixed latency to every request.

:class:`LatencyProxy` runs its own event loop in a thread;
:class:`ProcessLatencyProxy` runs one in a child process, so that forwarding
does not compete with the measured event loop for the GIL (the scenarios use
this one). Client-to-server bytes are held for ``latency`` seconds (order kept,
requests still pipelined); replies pass straight through: each round trip
through it takes ``latency`` longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self


class _Proxy:
    """What both proxies share: the URL to connect to, and ``with``."""

    listen_port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listen_port}/0"

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LatencyProxy(_Proxy):
    """``with LatencyProxy(host, port, 0.05) as proxy: ... proxy.url ...``"""

    def __init__(self, host: str, port: int, latency: float) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.listen_port = 0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="latency-proxy")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("latency proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"latency proxy failed: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._forward(r, w)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        self.listen_port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_w.close()
            return
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def read_requests() -> None:
            while data := await client_r.read(65536):
                queue.put_nowait((loop.time() + self.latency, data))
            queue.put_nowait(None)

        async def send_requests() -> None:
            while (item := await queue.get()) is not None:
                deliver_at, data = item
                await asyncio.sleep(max(0.0, deliver_at - loop.time()))
                server_w.write(data)
            server_w.close()

        async def replies() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
            client_w.close()

        parts = [
            asyncio.create_task(read_requests()),
            asyncio.create_task(send_requests()),
            asyncio.create_task(replies()),
        ]
        try:
            await asyncio.gather(*parts)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for task in parts:
                task.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            client_w.close()
            server_w.close()


class ProcessLatencyProxy(_Proxy):
    """:class:`LatencyProxy` in a child process (same interface). The child
    ends when its standard input closes, so it never outlives this process."""

    def __init__(self, host: str, port: int, latency: float) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.listen_port = 0
        self._child: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        self._child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._proxy",
                self.host,
                str(self.port),
                repr(self.latency),
            ],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"latency proxy did not start: {line!r}")
        self.listen_port = int(line)
        return self

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def _child_main(argv: list[str]) -> None:
    host, port, latency = argv[0], int(argv[1]), float(argv[2])
    with LatencyProxy(host, port, latency) as proxy:
        print(proxy.listen_port, flush=True)
        sys.stdin.read()  # until the parent closes it (or exits)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
