"""PartyService (proto/collabedit/v1/party.proto): the daemon's local API for its organisation."""

from __future__ import annotations

import grpc
from google.protobuf.json_format import ParseDict

from collabedit_secure.rpc.generated import common_pb2 as cpb
from collabedit_secure.rpc.generated import party_pb2 as ppb
from collabedit_secure.rpc.generated import party_pb2_grpc

from .queue import QueueFullError, to_record

_STATE = {"QUEUED": ppb.EDIT_STATE_QUEUED, "IN_ROUND": ppb.EDIT_STATE_IN_ROUND, "APPLIED": ppb.EDIT_STATE_APPLIED,
          "FAILED": ppb.EDIT_STATE_FAILED}
_STATE_NAME = {v: k for k, v in _STATE.items()}


def record_from_proto(request: ppb.EditRequest) -> dict:
    return to_record(request.case_id, request.prompt, request.subject, request.target_new,
                     request.target_true if request.HasField("target_true") else None,
                     request.relation_id if request.HasField("relation_id") else None,
                     request.paraphrase_prompts, request.neighborhood_prompts)


def _timestamp(seconds: float):
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class PartyServicer(party_pb2_grpc.PartyServiceServicer):
    def __init__(self, daemon):
        self.daemon = daemon

    def SubmitEditRequests(self, request, context):
        if not request.requests:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "requests: give at least one edit request")
        try:
            accepted, rejected = self.daemon.queue.submit([record_from_proto(r) for r in request.requests])
        except QueueFullError as error:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return ppb.SubmitEditRequestsResponse(
            accepted_case_ids=accepted,
            rejected=[ppb.RejectedEditRequest(case_id=c, reason=r) for c, r in rejected])

    def ListEditRequests(self, request, context):
        state = _STATE_NAME.get(request.state) if request.state else None
        return ppb.ListEditRequestsResponse(requests=[
            ppb.EditRequestStatus(case_id=e.case_id, state=_STATE[e.state], round_id=e.round_id, error=e.error,
                                  submitted_at=_timestamp(e.submitted_at))
            for e in self.daemon.queue.list(state)])

    def GetPartyStatus(self, request, context):
        d = self.daemon
        response = ppb.GetPartyStatusResponse(
            party_id=d.config.party_id, federation_id=d.config.federation_id,
            coordinator_address=d.config.coordinator, connected=d.connected,
            last_checkpoint_path=d.last_checkpoint or "", queued_requests=d.queue.count())
        client = d.client
        if client is not None and client.status is not None:
            response.round.CopyFrom(client.status)
        return response

    def GetRoundResult(self, request, context):
        d = self.daemon
        result = d.queue.result(request.round_id)
        if result is None:
            if d.busy and request.round_id in (0, d.client.round_id):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"round {d.client.round_id} has not finished yet at this party")
            context.abort(grpc.StatusCode.NOT_FOUND, f"this party took part in no round {request.round_id}"
                          if request.round_id else "this party has taken part in no round yet")
        if d.busy and request.round_id == 0 and d.client.round_id > result["round_id"]:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"round {d.client.round_id} has not finished yet at this party")
        response = ppb.GetRoundResultResponse(
            round_id=result["round_id"], phase=cpb.RoundPhase.Value("ROUND_PHASE_" + result["phase"]),
            applied_layers=result["applied_layers"], checkpoint_path=result["checkpoint_path"],
            delta_path=result["delta_path"], bytes_sent=result["bytes_sent"],
            bytes_received=result["bytes_received"], case_ids=result["case_ids"])
        response.stage_seconds.update(result["stage_seconds"])
        metrics = result.get("metrics")
        if result["phase"] == "COMPLETED" and metrics:
            ParseDict({k: v for k, v in metrics.items() if v is not None}, response.metrics)
        return response

    def StartRound(self, request, context):
        from .daemon import StartRoundError

        try:
            round_id, count = self.daemon.start_round()
        except StartRoundError as error:
            context.abort(error.code, str(error))
        return ppb.StartRoundResponse(round_id=round_id, request_count=count)
