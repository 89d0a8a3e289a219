"""gRPC plumbing: generated stubs, channel/server options, health and reflection.

- generated/: Python stubs compiled from proto/collabedit/v1/*.proto (package collabedit.v1) by
  setup.py during `pip install -e .`; never edited or checked in. Import them as
  `from collabedit_secure.rpc.generated import coordinator_pb2, coordinator_pb2_grpc` (likewise
  common_pb2, party_pb2, party_pb2_grpc).
- channels.py: GRPC_OPTIONS for every channel and server, and the standard health/reflection
  services.
"""

from .channels import (
    COORDINATOR_SERVICE,
    GRPC_OPTIONS,
    MAX_MESSAGE_BYTES,
    PARTY_SERVICE,
    serve_health_and_reflection,
    serve_health_and_reflection_aio,
)

__all__ = [
    "COORDINATOR_SERVICE",
    "GRPC_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "PARTY_SERVICE",
    "serve_health_and_reflection",
    "serve_health_and_reflection_aio",
]
