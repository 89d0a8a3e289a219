"""The public gRPC contract (proto/collabedit/v1): generated stubs, a live server with health and
reflection, message-size options, and buf lint."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from collabedit_secure.rpc import (
    COORDINATOR_SERVICE,
    GRPC_OPTIONS,
    MAX_MESSAGE_BYTES,
    PARTY_SERVICE,
    serve_health_and_reflection,
    serve_health_and_reflection_aio,
)

try:
    from collabedit_secure.rpc.generated import (
        common_pb2,
        coordinator_pb2,
        coordinator_pb2_grpc,
        party_pb2,
        party_pb2_grpc,
    )
except ImportError as error:  # a checkout that was never installed: fail, the contract must build
    raise ImportError(f"gRPC stubs not generated ({error}); run `pip install --no-build-isolation -e .`, "
                      "which compiles proto/collabedit/v1 into collabedit_secure/rpc/generated") from error

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
UNARY, CLIENT_STREAM, SERVER_STREAM = (False, False), (True, False), (False, True)

EXPECTED_RPCS = {
    COORDINATOR_SERVICE: {
        "JoinFederation": UNARY,
        "AdvertiseKeys": UNARY,
        "ListKeyAdvertisements": UNARY,
        "SubmitEncryptedShares": UNARY,
        "ListEncryptedShares": UNARY,
        "PublishHeContext": UNARY,
        "GetHeContext": UNARY,
        "UploadContribution": CLIENT_STREAM,
        "GetUnmaskingPlan": UNARY,
        "SubmitUnmaskingShares": UNARY,
        "DownloadUpdate": SERVER_STREAM,
        "DownloadAggregate": SERVER_STREAM,
        "GetRound": UNARY,
        "WatchRound": SERVER_STREAM,
        "ReportApplied": UNARY,
    },
    PARTY_SERVICE: {
        "SubmitEditRequests": UNARY,
        "ListEditRequests": UNARY,
        "GetPartyStatus": UNARY,
        "GetRoundResult": UNARY,
        "StartRound": UNARY,
    },
}
MODULES = {COORDINATOR_SERVICE: coordinator_pb2, PARTY_SERVICE: party_pb2}


# ---- 1. the generated modules --------------------------------------------------------------------

@pytest.mark.parametrize("service_name", sorted(EXPECTED_RPCS))
def test_every_rpc_exists_with_its_streaming_kind_and_own_request_response(service_name):
    service = MODULES[service_name].DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[1]]
    assert service.full_name == service_name
    found = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert found == EXPECTED_RPCS[service_name]
    for method in service.methods:  # buf's RPC_REQUEST_STANDARD_NAME, checked on what Python sees
        assert method.input_type.full_name == f"collabedit.v1.{method.name}Request"
        assert method.output_type.full_name == f"collabedit.v1.{method.name}Response"


def test_stubs_and_servicer_registration_are_generated():
    for module, service in ((coordinator_pb2_grpc, "CoordinatorService"), (party_pb2_grpc, "PartyService")):
        assert hasattr(module, f"{service}Stub")
        assert hasattr(module, f"add_{service}Servicer_to_server")
        servicer = getattr(module, f"{service}Servicer")
        assert set(EXPECTED_RPCS[f"collabedit.v1.{service}"]) <= set(vars(servicer))


def test_every_enum_starts_with_an_unspecified_zero_value():
    enums = [e for module in (common_pb2, coordinator_pb2, party_pb2) for e in module.DESCRIPTOR.enum_types_by_name.values()]
    assert {e.name for e in enums} >= {"Schedule", "PrivacyMode", "Tensor", "Encoding", "RoundPhase", "ShareKind", "EditState"}
    for enum in enums:
        assert enum.values[0].number == 0 and enum.values[0].name.endswith("_UNSPECIFIED"), enum.name
    assert [v.name for v in common_pb2.RoundPhase.DESCRIPTOR.values][1:] == [
        f"ROUND_PHASE_{p}" for p in ("WAITING_FOR_PARTIES", "ADVERTISING_KEYS", "SHARING_KEYS", "UPLOADING",
                                     "UNMASKING", "SOLVING", "DOWNLOADING", "COMPLETED", "FAILED", "ROLLED_BACK")]


def test_streamed_messages_are_a_header_or_a_chunk():
    for message in (coordinator_pb2.UploadContributionRequest, coordinator_pb2.DownloadUpdateResponse,
                    coordinator_pb2.DownloadAggregateResponse):
        (oneof,) = message.DESCRIPTOR.oneofs
        assert [(f.name, f.message_type.full_name) for f in oneof.fields] == [
            ("header", "collabedit.v1.PayloadHeader"), ("chunk", "collabedit.v1.PayloadChunk")]
    request = coordinator_pb2.UploadContributionRequest(chunk=common_pb2.PayloadChunk(offset=2**40, data=b"x"))
    decoded = coordinator_pb2.UploadContributionRequest.FromString(request.SerializeToString())
    assert decoded.WhichOneof("part") == "chunk" and decoded.chunk.offset == 2**40


def without_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc's descriptor sets carry json_name; the copy embedded in generated Python code does not."""
    def strip(message):
        for field in (*message.field, *message.extension):
            field.ClearField("json_name")
        for nested in message.nested_type:
            strip(nested)

    for message in file.message_type:
        strip(message)
    for field in file.extension:
        field.ClearField("json_name")
    return file


def test_generated_stubs_match_the_proto_sources():
    """Stale stubs (a .proto edited without reinstalling) would silently speak an older contract."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.glob("collabedit/v1/*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        assert protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--descriptor_set_out={out}",
                            *map(str, protos)]) == 0
        compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    by_name = {f.name: without_json_names(f) for f in compiled.file}
    assert set(by_name) == {f"collabedit/v1/{p.name}" for p in protos}
    for module in (common_pb2, coordinator_pb2, party_pb2):
        generated = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert generated == by_name[module.DESCRIPTOR.name], (
            f"{module.__name__} is stale; reinstall (pip install --no-build-isolation -e .) to regenerate")


# ---- 2. a live server ----------------------------------------------------------------------------

class OneRpcCoordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """GetRound echoes the round; UploadContribution counts bytes; everything else is UNIMPLEMENTED."""

    def GetRound(self, request, context):
        status = common_pb2.RoundStatus(round_id=request.round_id, phase=common_pb2.ROUND_PHASE_UPLOADING)
        return coordinator_pb2.GetRoundResponse(status=status)

    def UploadContribution(self, request_iterator, context):
        received = sum(len(message.chunk.data) for message in request_iterator)
        return coordinator_pb2.UploadContributionResponse(received_bytes=received)


@pytest.fixture
def coordinator_channel():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(OneRpcCoordinator(), server)
    serve_health_and_reflection(server, [COORDINATOR_SERVICE])
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            yield channel
    finally:
        assert server.stop(0).wait(timeout=10), "server did not stop within 10 s"


def test_unary_rpc_answers_and_unimplemented_ones_say_so(coordinator_channel):
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(coordinator_channel)
    response = stub.GetRound(coordinator_pb2.GetRoundRequest(round_id=7), timeout=10)
    assert response.status.round_id == 7 and response.status.phase == common_pb2.ROUND_PHASE_UPLOADING
    with pytest.raises(grpc.RpcError) as raised:
        stub.JoinFederation(coordinator_pb2.JoinFederationRequest(federation_id="f"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_reports_serving_for_the_server_and_each_service(coordinator_channel):
    health = health_pb2_grpc.HealthStub(coordinator_channel)
    for service in ("", COORDINATOR_SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service=PARTY_SERVICE), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # not served here


def test_reflection_lists_and_describes_the_services(coordinator_channel):
    database = ProtoReflectionDescriptorDatabase(coordinator_channel)
    assert set(database.get_services()) == {COORDINATOR_SERVICE, "grpc.health.v1.Health",
                                             "grpc.reflection.v1alpha.ServerReflection"}
    # A client with no .proto files rebuilds the whole contract (common.proto included) from the server.
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(COORDINATOR_SERVICE)
    upload = service.methods_by_name["UploadContribution"]
    assert upload.client_streaming and not upload.server_streaming
    header = pool.FindMessageTypeByName("collabedit.v1.PayloadHeader")
    assert header.fields_by_name["tensor"].enum_type.full_name == "collabedit.v1.Tensor"


def test_options_carry_chunks_above_grpcs_4_mib_default_and_refuse_oversize(coordinator_channel):
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(coordinator_channel)

    def upload(size):
        chunk = common_pb2.PayloadChunk(offset=0, data=bytes(size))
        return stub.UploadContribution(iter([coordinator_pb2.UploadContributionRequest(chunk=chunk)]), timeout=20)

    assert upload(5 * 1024 * 1024).received_bytes == 5 * 1024 * 1024  # default options would refuse it
    with pytest.raises(grpc.RpcError) as raised:
        upload(MAX_MESSAGE_BYTES + 1)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_asyncio_server_gets_the_same_health_and_reflection():
    async def scenario():
        server = grpc.aio.server(options=GRPC_OPTIONS)
        party_pb2_grpc.add_PartyServiceServicer_to_server(party_pb2_grpc.PartyServiceServicer(), server)
        await serve_health_and_reflection_aio(server, [PARTY_SERVICE])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=PARTY_SERVICE), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await asyncio.wait_for(server.stop(0), timeout=10)

    asyncio.run(scenario())


def test_health_helper_refuses_bad_names_and_the_wrong_server_kind():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        with pytest.raises(TypeError):
            serve_health_and_reflection(server, COORDINATOR_SERVICE)  # a bare string, not a list
        with pytest.raises(ValueError, match="fully qualified"):
            serve_health_and_reflection(server, ["/collabedit.v1.CoordinatorService/GetRound"])
    finally:
        server.stop(0)
    with pytest.raises(TypeError, match="synchronous"):
        asyncio.run(serve_health_and_reflection_aio(grpc.server(futures.ThreadPoolExecutor(max_workers=1)),
                                                    [PARTY_SERVICE]))


# ---- 3. buf lint ---------------------------------------------------------------------------------

def find_buf() -> str | None:
    for candidate in (shutil.which("buf"), ROOT / ".tools/node_modules/.bin/buf", ROOT / "node_modules/.bin/buf"):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def buf_lint(buf: str, workspace: Path) -> subprocess.CompletedProcess:
    """`buf lint` where buf.yaml is (it names proto/ as the module root)."""
    return subprocess.run([buf, "lint"], cwd=workspace, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def buf():
    path = find_buf()
    if path is None:
        pytest.skip("buf not found on PATH, in .tools/node_modules/.bin or node_modules/.bin "
                    "(.ci/run installs it: npm install --prefix .tools @bufbuild/buf)")
    return path


def test_buf_lint_passes(buf):
    result = buf_lint(buf, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_an_undocumented_field_and_a_bad_enum_value(buf, tmp_path):
    """The lint configuration is live: the same tree with two defects fails."""
    shutil.copytree(PROTO_ROOT, tmp_path / "proto")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    common = tmp_path / "proto/collabedit/v1/common.proto"
    text = common.read_text()
    text = text.replace("SCHEDULE_PARALLEL = 2;", "PARALLEL = 2;")
    text = text.replace("  // Columns of W: the width of the key vectors k (the projection's input).\n", "")
    common.write_text(text)
    result = buf_lint(buf, tmp_path)
    assert result.returncode != 0
    assert 'should be prefixed with "SCHEDULE_"' in result.stdout
    assert '"d_in" should have a non-empty comment' in result.stdout
