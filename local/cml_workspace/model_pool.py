"""Model replicas as long-lived processes, and the pool of one deployment's replicas.

A replica is ``model_replica.py serve`` in its own session, connected to the workspace by a
Unix socketpair (no per-call process or connection set-up). :class:`ReplicaConnection` is the
workspace's side of the framed protocol described in ``model_replica.py``: one call in flight
at a time, its answer resolves a future. :class:`ReplicaPool` hands free replicas to callers
(a caller waits, FIFO, up to the busy timeout) and takes them back.

Everything here runs on the server's event loop thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from .model_replica import KIND_FAILED, KIND_READY, REQUEST, RESPONSE
from .scheduler import group_has_members

log = logging.getLogger("cml_workspace.model_pool")

REPLICA_SCRIPT = Path(__file__).with_name("model_replica.py")
#: in a replica's environment: ``<deployment id>/<replica index>`` (the ``cml`` stand-in reads it)
REPLICA_ENV = "CML_WORKSPACE_REPLICA"
_HEADER = RESPONSE.size
_SMALL = 64 * 1024


class ReplicaGone(Exception):
    """The replica's process ended (or its socket closed) while a call or start-up was pending."""


class ReplicaTimedOut(Exception):
    """The replica did not answer a call within the request timeout."""


class ReplicaStartError(Exception):
    """A replica could not start: the message says why (the entry point's error, an exit...)."""


class ReplicaConnection(asyncio.Protocol):
    """The workspace's end of one replica's socket."""

    def __init__(self, on_late: Callable[[bytes], None], on_lost: Callable[[], None]):
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieve)  # its exception may have no reader (start-up abandoned)
        self._buf = bytearray()
        self._head: tuple[int, int, int] | None = None
        self._waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._late = False  # a call timed out: its answer is still to come
        self._on_late = on_late
        self._on_lost = on_lost

    # -- protocol ------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if not buf and self._head is None and len(data) >= _HEADER:  # fast path: one whole frame
            kind, n, m = RESPONSE.unpack_from(data)
            if len(data) == _HEADER + n + m:
                self._deliver(kind, data[_HEADER:_HEADER + n], data[_HEADER + n:])
                return
        buf += data
        while True:
            if self._head is None:
                if len(buf) < _HEADER:
                    return
                self._head = RESPONSE.unpack_from(buf)
            kind, n, m = self._head
            end = _HEADER + n + m
            if len(buf) < end:
                return
            body, metrics = bytes(buf[_HEADER:_HEADER + n]), bytes(buf[_HEADER + n:end])
            del buf[:end]
            self._head = None
            self._deliver(kind, body, metrics)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for future in (self.ready, self._waiter):
            if future is not None and not future.done():
                future.set_exception(ReplicaGone("the replica's process ended"))
        self._waiter = None
        self._on_lost()

    # -- calls ---------------------------------------------------------------------------------
    def _deliver(self, kind: int, body: bytes, metrics: bytes) -> None:
        if kind in (KIND_READY, KIND_FAILED):
            if not self.ready.done():
                self.ready.set_result((kind, body))
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._late:
            self._late = False
            self._on_late(metrics)
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((kind, body, metrics))

    def call(self, payload: bytes, timeout: float) -> asyncio.Future:
        """Send one request; the future resolves to ``(kind, body, metrics)``."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._timer = loop.call_later(timeout, self._expire)
        head = REQUEST.pack(len(payload))
        if len(payload) < _SMALL:
            self.transport.write(head + payload)
        else:
            self.transport.writelines((head, payload))
        return waiter

    def _expire(self) -> None:
        self._timer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            self._late = True
            waiter.set_exception(ReplicaTimedOut())

    @property
    def busy(self) -> bool:
        """A call is in flight (or timed out and its answer is still to come)."""
        return self._waiter is not None or self._late

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Replica:
    def __init__(self, index: int, proc: subprocess.Popen, log_path: Path):
        self.index = index
        self.proc = proc
        self.log_path = log_path
        self.conn: ReplicaConnection | None = None
        self.pool: ReplicaPool | None = None

    @property
    def alive(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def _late_answer(self, metrics: bytes) -> None:
        """The answer to a call that timed out arrived: the replica is free again."""
        if self.pool is not None:
            self.pool.late_answer(self, metrics)

    def _lost(self) -> None:
        if self.pool is not None:
            self.pool.replica_lost(self)


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail)


async def spawn_replica(
    *,
    index: int,
    python: str,
    entry_file: Path,
    display: str,
    function_name: str,
    cwd: Path,
    env: Mapping[str, str],
    log_dir: Path,
    start_timeout: float,
    grace: float,
) -> Replica:
    """Start a replica and wait until it is ready (its entry point imported and
    ``build_check()`` passed). Raises :class:`ReplicaStartError` with the reason.

    Must run on the event loop's thread, the server's main thread: the replica asks to be killed
    when the thread that started it ends (``PR_SET_PDEATHSIG``)."""
    loop = asyncio.get_running_loop()
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"replica-{index}.log"
    command = [python, str(REPLICA_SCRIPT), "serve", "--file", str(entry_file), "--display", display,
               "--function", function_name, "--fd", str(child.fileno()), "--parent-pid", str(os.getpid())]
    try:
        with open(log_path, "ab") as out:
            out.write(f"[cml_workspace] {time.strftime('%Y-%m-%dT%H:%M:%S')} replica {index} starting: "
                      f"{display}:{function_name} (cwd {cwd})\n".encode())
            out.flush()
            env = {**env, REPLICA_ENV: f"{env.get('CML_MODEL_DEPLOYMENT_ID', '')}/{index}"}
            proc = subprocess.Popen(command, cwd=cwd, env=env, pass_fds=(child.fileno(),),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    except OSError as exc:
        parent.close()
        raise ReplicaStartError(f"replica {index} could not start: {exc}") from None
    finally:
        child.close()
    replica = Replica(index, proc, log_path)
    try:
        _, conn = await loop.connect_accepted_socket(
            lambda: ReplicaConnection(replica._late_answer, replica._lost), sock=parent)
        replica.conn = conn
        try:
            kind, body = await asyncio.wait_for(asyncio.shield(conn.ready), start_timeout)
        except TimeoutError:
            raise ReplicaStartError(f"replica {index} was not ready within {start_timeout:g} s") from None
        except ReplicaGone:
            code = await wait_exit(proc, 2.0)
            tail = log_tail(log_path)
            raise ReplicaStartError(f"replica {index} exited with code {code} before it was ready"
                                    + (f"; its log ends with:\n{tail}" if tail else "")) from None
        if kind != KIND_READY:
            try:
                message = json.loads(body)["message"]
            except (ValueError, KeyError, TypeError):
                message = body.decode(errors="replace")
            raise ReplicaStartError(f"replica {index} failed to load the entry point: {message} (log: {log_path})")
        return replica
    except BaseException:
        await terminate(replica, grace)
        raise


async def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def terminate(replica: Replica, grace: float) -> int | None:
    """Close the replica's socket (it exits at once when idle), then SIGTERM its process group,
    then SIGKILL after ``grace``; leftovers of the group are killed too."""
    proc = replica.proc
    if replica.conn is not None:
        replica.conn.close()
    code = await wait_exit(proc, 0.5)
    if code is None:
        _killpg(proc.pid, signal.SIGTERM)
        code = await wait_exit(proc, grace)
    if code is None:
        _killpg(proc.pid, signal.SIGKILL)
        code = await wait_exit(proc, 5.0)
    if group_has_members(proc.pid):
        _killpg(proc.pid, signal.SIGKILL)
    return code


class ReplicaPool:
    """The replicas of one deployment and who may use them.

    ``acquire`` is FIFO for waiters; free replicas are reused most-recently-freed first (at low
    load one replica stays warm). ``on_lost(pool, replica)`` is called when a replica's process
    ends while the pool is open (the supervisor replaces it)."""

    def __init__(self, deployment_id: str, crns: tuple[str, str, str], metrics_sink: Callable,
                 on_lost: Callable[[ReplicaPool, Replica], None]):
        self.deployment_id = deployment_id
        self.crns = crns
        self.replicas: list[Replica] = []
        self.closed = False
        self._free: list[Replica] = []
        self._waiters: deque[asyncio.Future] = deque()
        self._metrics_sink = metrics_sink
        self._on_lost = on_lost

    def add(self, replica: Replica) -> None:
        replica.pool = self
        self.replicas.append(replica)
        self.release(replica)

    @property
    def ready_count(self) -> int:
        return sum(1 for r in self.replicas if r.alive)

    @property
    def busy_count(self) -> int:
        return sum(1 for r in self.replicas if r.alive and r.conn.busy)

    def try_acquire(self) -> Replica | None:
        free = self._free
        while free:
            replica = free.pop()
            if replica.alive:
                return replica
        return None

    async def acquire(self, timeout: float) -> Replica | None:
        """A free replica, or None after ``timeout`` (or when the pool closes)."""
        replica = self.try_acquire()
        if replica is not None or self.closed:
            return replica
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _expire_waiter, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def release(self, replica: Replica) -> None:
        if not replica.alive or self.closed:
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(replica)
                return
        self._free.append(replica)

    def late_answer(self, replica: Replica, metrics: bytes) -> None:
        if metrics:
            self._metrics_sink(self.crns, metrics)
        self.release(replica)

    def replica_lost(self, replica: Replica) -> None:
        if replica in self._free:
            self._free.remove(replica)
        if not self.closed:
            self._on_lost(self, replica)

    def replace(self, old: Replica, new: Replica) -> None:
        if old in self.replicas:
            self.replicas.remove(old)
        self.add(new)

    def close(self) -> None:
        """No new calls; waiting callers get None."""
        self.closed = True
        self._free.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def shutdown(self, grace: float, drain: float = 0.0) -> None:
        """Close, let calls in flight finish for up to ``drain`` seconds, then end the processes."""
        self.close()
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and any(r.alive and r.conn.busy for r in self.replicas):
            await asyncio.sleep(0.02)
        await asyncio.gather(*(terminate(r, grace) for r in self.replicas))


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _expire_waiter(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)

