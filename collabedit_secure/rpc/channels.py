"""Options every collabedit gRPC channel and server shares, and the standard health/reflection services.

Payloads travel as ~1 MiB chunks (proto/collabedit/v1/common.proto: PayloadChunk), so no message
needs to be large; the limit is raised above gRPC's 4 MiB receive default only to leave room for a
chunk size up to 4 MiB plus framing. Keepalive follows grpc's doc/keepalive.md: a client pings an
idle connection every 2 minutes (a WatchRound stream can be silent for a whole phase, and NATs drop
quiet connections), and the server accepts pings down to every minute, so the two sides can never
trip the server's "too_many_pings" GOAWAY.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

COORDINATOR_SERVICE = "collabedit.v1.CoordinatorService"
PARTY_SERVICE = "collabedit.v1.PartyService"

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # the largest chunk a round may ask for (4 MiB) + headroom
KEEPALIVE_TIME_MS = 120_000  # client pings after 2 min without traffic; the guide warns below 1 min
KEEPALIVE_TIMEOUT_MS = 20_000  # a ping unanswered this long closes the connection (gRPC's default)
MIN_PING_INTERVAL_MS = 60_000  # the server tolerates pings this often: half the client's interval

# One list for both sides (grpc.insecure_channel / secure_channel / grpc.server / grpc.aio.server):
# options that concern only the other side are ignored by gRPC.
GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),  # parties hold their channel between rounds
    ("grpc.http2.max_pings_without_data", 0),  # a silent WatchRound stream may ping indefinitely
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    # gRPC sets SO_REUSEPORT by default on Linux, which lets a second server bind a port already
    # in use and silently share its traffic; a busy port must fail loudly instead.
    ("grpc.so_reuseport", 0),
)


def _checked_names(service_full_names: Iterable[str]) -> list[str]:
    if isinstance(service_full_names, str):
        raise TypeError("service_full_names must be a list of names, not one string")
    names = list(dict.fromkeys(service_full_names))  # unique, in order
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
            raise ValueError(f"not a fully qualified gRPC service name: {name!r} "
                             f"(expected e.g. {COORDINATOR_SERVICE!r})")
    return names


def _reflected_names(names: Sequence[str]) -> list[str]:
    return [*names, health.SERVICE_NAME, reflection.SERVICE_NAME]


def serve_health_and_reflection(server: grpc.Server, service_full_names: Iterable[str]) -> health.HealthServicer:
    """Adds grpc.health.v1.Health and server reflection to a (not yet started) grpc.server.

    Every named service and the whole server ("") report SERVING. Returns the health servicer, so
    the caller can mark a service NOT_SERVING or call enter_graceful_shutdown() before stopping.
    For a grpc.aio server use serve_health_and_reflection_aio.
    """
    if isinstance(server, grpc.aio.Server):
        raise TypeError("a grpc.aio server needs `await serve_health_and_reflection_aio(server, names)`")
    names = _checked_names(service_full_names)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", *names):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(_reflected_names(names), server)
    return servicer


async def serve_health_and_reflection_aio(server: grpc.aio.Server,
                                          service_full_names: Iterable[str]) -> health.aio.HealthServicer:
    """serve_health_and_reflection for a grpc.aio server (the returned servicer's methods are async)."""
    if not isinstance(server, grpc.aio.Server):
        raise TypeError("a synchronous grpc.server needs serve_health_and_reflection(server, names)")
    names = _checked_names(service_full_names)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", *names):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(_reflected_names(names), server)
    return servicer
