"""API errors in CML's shape: HTTP status plus ``{"error", "code", "message", "details"}``.

``code`` is the gRPC status code (CML API v2 is served by grpc-gateway).
"""

from __future__ import annotations

from enum import IntEnum


class GrpcCode(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: HTTP status for each gRPC code, as grpc-gateway maps them.
HTTP_STATUS = {
    GrpcCode.CANCELLED: 499,
    GrpcCode.UNKNOWN: 500,
    GrpcCode.INVALID_ARGUMENT: 400,
    GrpcCode.DEADLINE_EXCEEDED: 504,
    GrpcCode.NOT_FOUND: 404,
    GrpcCode.ALREADY_EXISTS: 409,
    GrpcCode.PERMISSION_DENIED: 403,
    GrpcCode.RESOURCE_EXHAUSTED: 429,
    GrpcCode.FAILED_PRECONDITION: 400,
    GrpcCode.ABORTED: 409,
    GrpcCode.OUT_OF_RANGE: 400,
    GrpcCode.UNIMPLEMENTED: 501,
    GrpcCode.INTERNAL: 500,
    GrpcCode.UNAVAILABLE: 503,
    GrpcCode.DATA_LOSS: 500,
    GrpcCode.UNAUTHENTICATED: 401,
}

#: gRPC code for an HTTP status raised by the framework itself (unknown route, bad method...).
GRPC_FOR_HTTP = {
    400: GrpcCode.INVALID_ARGUMENT,
    401: GrpcCode.UNAUTHENTICATED,
    403: GrpcCode.PERMISSION_DENIED,
    404: GrpcCode.NOT_FOUND,
    405: GrpcCode.UNIMPLEMENTED,
    409: GrpcCode.ALREADY_EXISTS,
    413: GrpcCode.RESOURCE_EXHAUSTED,
    422: GrpcCode.INVALID_ARGUMENT,
    429: GrpcCode.RESOURCE_EXHAUSTED,
    501: GrpcCode.UNIMPLEMENTED,
    503: GrpcCode.UNAVAILABLE,
}


class ApiError(Exception):
    """An error answered to the client in CML's error shape."""

    def __init__(self, code: GrpcCode, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.code = GrpcCode(code)
        self.message = message
        self.http_status = http_status or HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict:
        return error_body(self.code, self.message)


def error_body(code: GrpcCode | int, message: str) -> dict:
    return {"error": message, "code": int(code), "message": message, "details": []}


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(GrpcCode.NOT_FOUND, f"{kind} not found: {ident}")


def invalid(message: str) -> ApiError:
    return ApiError(GrpcCode.INVALID_ARGUMENT, message)
