"""A model replica, or a build's entry-point check: one fresh interpreter, the project folder
as working directory and first on ``sys.path`` (stdlib only; run by file path, not ``-m``).

    python model_replica.py check --file F --function NAME --result OUT.json
    python model_replica.py serve --file F --function NAME --fd N --parent-pid P

``check`` (a build): import ``F`` and check that ``NAME`` is a callable; the outcome goes to
``OUT.json`` (``{"ok", "message"}``), the traceback to stderr (the build log).

``serve`` (a replica): import ``F``, call its ``build_check()`` if it defines one, then say
``ready`` (or ``failed`` with the message) on the socket ``N`` and answer calls one at a time
until the socket closes. Frames on the socket (big-endian):

- workspace → replica: ``u32 length`` + the model-service request body (JSON bytes, already
  validated by the router: an object with ``request``);
- replica → workspace: ``u8 kind, u32 body length, u32 metrics length`` + body + metrics.
  ``kind`` 0: body is the HTTP answer ``{"success": true, "response": ...}``; 1: ``predict``
  raised, body is ``{"message"}``; 2 / 3: ready / failed to start (body ``{"message"}``).
  Metrics: the predictions the ``cml`` stand-in recorded during the call, each
  ``u8 uuid length, i64 start ms, i64 end ms, u32 metrics length`` + uuid + metrics (a JSON
  object), so the workspace stores them without decoding; empty when none.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import struct
import sys
import traceback

REQUEST = struct.Struct("!I")
RESPONSE = struct.Struct("!BII")
RECORD = struct.Struct("!BqqI")
KIND_OK, KIND_ERROR, KIND_READY, KIND_FAILED = 0, 1, 2, 3
_HERE = os.path.dirname(os.path.abspath(__file__))
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _fix_sys_path(project_dir: str) -> None:
    """``python this_file.py`` put this package's folder first on sys.path: replace it with the
    project folder (a model imports like a script run from ``/home/cdsw``)."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, project_dir)


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_entry_point(file_path: str, function_name: str, display: str = ""):
    """Import the entry point file as a module (named after the file) and return
    ``(module, function)``; raises what the import raised, or LookupError/TypeError."""
    path = os.path.abspath(file_path)
    display = display or file_path
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.isidentifier() or name in sys.modules:
        name = "cml_model_entry_point"
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    function = getattr(module, function_name, None)
    if function is None:
        raise LookupError(f"{display} defines no {function_name!r}")
    if not callable(function):
        raise TypeError(f"{display}: {function_name!r} is a {type(function).__name__}, not a function")
    return module, function


def _check(args: argparse.Namespace) -> int:
    try:
        load_entry_point(args.file, args.function, args.display)
        outcome = {"ok": True, "message": f"{args.function}() found in {args.display or args.file}"}
        code = 0
    except BaseException as exc:  # a SystemExit at import time fails the build too
        traceback.print_exc()
        outcome = {"ok": False, "message": describe(exc)}
        code = 1
    with open(args.result, "w") as fh:
        json.dump(outcome, fh)
    print(f"[cml_workspace] entry point check: {outcome['message']}", flush=True)
    return code


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this replica when the workspace server dies (it is in its own session,
    so it would otherwise outlive a killed server)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _records_taker():
    """The stand-in ``cml`` package's hook: predictions recorded during a call."""
    module = sys.modules.get("cml._local")
    if module is None:
        try:
            import cml._local as module  # noqa: PLC0415 - only if the model uses the stand-in
        except ImportError:
            return lambda: None
    return getattr(module, "take_records", lambda: None)


def pack_records(records: list[dict]) -> bytes:
    packed = []
    for record in records:
        try:
            uuid = str(record.get("uuid") or "").encode()[:255]
            start = int(record["start"])
            end = int(record.get("end") or start)
            try:
                metrics = json.dumps(record.get("metrics") or {}, separators=(",", ":"), default=str).encode()
            except (TypeError, ValueError) as exc:
                print(f"[cml_workspace] metrics of {uuid.decode()} not JSON ({exc}): kept empty",
                      file=sys.stderr, flush=True)
                metrics = b"{}"
            packed.append(RECORD.pack(len(uuid), start, end, len(metrics)) + uuid + metrics)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            print(f"[cml_workspace] a malformed metrics record dropped: {exc}", file=sys.stderr, flush=True)
    return b"".join(packed)


def unpack_records(blob: bytes):
    """Inverse of :func:`pack_records`: ``(uuid or None, start, end, metrics JSON text)``."""
    offset, size, total = 0, RECORD.size, len(blob)
    while offset + size <= total:
        uuid_length, start, end, metrics_length = RECORD.unpack_from(blob, offset)
        offset += size
        uuid = blob[offset:offset + uuid_length].decode()
        offset += uuid_length
        metrics = blob[offset:offset + metrics_length].decode()
        offset += metrics_length
        yield uuid or None, start, end, metrics


def _send(sock: socket.socket, kind: int, body: bytes, metrics: bytes = b"") -> None:
    sock.sendall(RESPONSE.pack(kind, len(body), len(metrics)) + body + metrics)


def _serve(args: argparse.Namespace) -> int:
    _die_with_parent(args.parent_pid)
    sock = socket.socket(fileno=args.fd)
    try:
        module, function = load_entry_point(args.file, args.function, args.display)
        check = getattr(module, "build_check", None)
        if callable(check):
            answer = check()
            print(f"[cml_workspace] build_check() answered: {_dumps(answer)[:2000]}", flush=True)
    except BaseException as exc:
        traceback.print_exc()
        _send(sock, KIND_FAILED, _dumps({"message": describe(exc)}).encode())
        return 1
    take_records = _records_taker()
    take_records()  # what build_check may have recorded is not a prediction
    _send(sock, KIND_READY, _dumps({"message": "ready"}).encode())
    print(f"[cml_workspace] replica ready: {args.display or args.file}:{args.function}", flush=True)

    rfile = sock.makefile("rb", buffering=1 << 16)
    loads, unpack, size = json.loads, REQUEST.unpack, REQUEST.size
    while True:
        head = rfile.read(size)
        if len(head) < size:
            return 0  # the workspace closed the socket: stop
        (length,) = unpack(head)
        data = rfile.read(length)
        if len(data) < length:
            return 0
        try:
            result = function(loads(data)["request"])
            body = b'{"success":true,"response":' + _dumps(result).encode() + b"}"
            kind = KIND_OK
        except Exception as exc:
            traceback.print_exc()
            kind, body = KIND_ERROR, _dumps({"message": describe(exc)}).encode()
        records = take_records()
        _send(sock, kind, body, pack_records(records) if records else b"")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["check", "serve"])
    parser.add_argument("--file", required=True, help="the entry point's absolute path")
    parser.add_argument("--function", required=True)
    parser.add_argument("--display", default="", help="the entry point's project path, for messages")
    parser.add_argument("--result", help="check: where the outcome goes")
    parser.add_argument("--fd", type=int, help="serve: the socket to the workspace")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    _fix_sys_path(os.getcwd())
    if args.mode == "check":
        return _check(args)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
