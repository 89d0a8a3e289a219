"""PartyService over a real loopback socket (synthetic engine, no coordinator running)."""

import os
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collabedit_secure.party.config import load_config
from collabedit_secure.party.daemon import PartyDaemon
from collabedit_secure.rpc.generated import party_pb2 as ppb
from collabedit_secure.rpc.generated import party_pb2_grpc

from .synthetic import party_config


@pytest.fixture
def daemon(synthetic_world, tmp_path):
    w = synthetic_world
    path = party_config(tmp_path, "alice", "127.0.0.1:1", w["stats"][0], w["hparams"], w["c0"],
                        timeouts={"join": 1, "phase": 5, "rpc": 1})
    d = PartyDaemon(load_config(path, insecure=True), insecure=True)
    d.start()
    yield d
    d.stop(grace=0)


@pytest.fixture
def stub(daemon):
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
    yield party_pb2_grpc.PartyServiceStub(channel)
    channel.close()


def edit(case_id, **over):
    fields = dict(case_id=case_id, prompt="{} is a citizen of", subject="Ann", target_new="France",
                  target_true="Spain", paraphrase_prompts=["Ann lives in"], neighborhood_prompts=["Bo is in"])
    fields.update(over)
    return ppb.EditRequest(**fields)


def test_port_file_health_and_private_state(daemon, tmp_path):
    assert int((tmp_path / "alice.port").read_text()) == daemon.port
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
        service="collabedit.v1.PartyService"), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    assert stat.S_IMODE(os.stat(tmp_path / "state-alice").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "state-alice" / "queue.db").st_mode) == 0o600


def test_submit_list_status(stub):
    response = stub.SubmitEditRequests(ppb.SubmitEditRequestsRequest(requests=[
        edit("1"), edit("2", prompt="{} {} twice"), edit("1"), edit("3", subject="Cy")]), timeout=5)
    assert list(response.accepted_case_ids) == ["1", "3"]
    assert [(r.case_id, r.reason) for r in response.rejected] == [
        ("2", "prompt must contain exactly one '{}' subject slot, found 2 in '{} {} twice'"),
        ("1", "case_id '1' already submitted to this party")]
    listed = stub.ListEditRequests(ppb.ListEditRequestsRequest(), timeout=5).requests
    assert [(r.case_id, r.state, r.round_id) for r in listed] == [("1", ppb.EDIT_STATE_QUEUED, 0),
                                                                   ("3", ppb.EDIT_STATE_QUEUED, 0)]
    assert listed[0].submitted_at.seconds > 0
    assert not stub.ListEditRequests(ppb.ListEditRequestsRequest(state=ppb.EDIT_STATE_APPLIED), timeout=5).requests
    status = stub.GetPartyStatus(ppb.GetPartyStatusRequest(), timeout=5)
    assert (status.party_id, status.federation_id, status.queued_requests) == ("alice", "fed-test", 2)
    assert status.coordinator_address == "127.0.0.1:1" and not status.connected


def test_errors_have_codes(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.SubmitEditRequests(ppb.SubmitEditRequestsRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        stub.StartRound(ppb.StartRoundRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no queued" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.GetRoundResult(ppb.GetRoundResultRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    stub.SubmitEditRequests(ppb.SubmitEditRequestsRequest(requests=[edit("1")]), timeout=5)
    with pytest.raises(grpc.RpcError) as error:  # nobody listens on port 1
        stub.StartRound(ppb.StartRoundRequest(), timeout=30)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "unreachable" in error.value.details()
    assert stub.GetPartyStatus(ppb.GetPartyStatusRequest(), timeout=5).queued_requests == 1  # nothing taken
