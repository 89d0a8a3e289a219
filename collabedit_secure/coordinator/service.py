"""CoordinatorService over gRPC: identity, message conversion and status codes; the logic is rounds.py.

The caller's identity is the CN of its verified client certificate (rpc/tls.peer_common_name); no
request field can choose it. Only a server started with --insecure (debugging) reads it from the
`x-collabedit-party` metadata instead. Every refusal is a rounds.CoordinatorError, answered with
its exact status code and a message a person can act on.
"""

from __future__ import annotations

import functools
import hashlib

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from collabedit_secure.rpc.generated import common_pb2 as pb, coordinator_pb2 as cpb, coordinator_pb2_grpc
from collabedit_secure.rpc.tls import peer_common_name

from .rounds import TERMINAL, CoordinatorError, InvalidArgument, Rounds, log_event

INSECURE_IDENTITY_KEY = "x-collabedit-party"
_SCHEDULES = {"sequential": pb.SCHEDULE_SEQUENTIAL, "parallel": pb.SCHEDULE_PARALLEL}
_PRIVACY = {"mask": pb.PRIVACY_MODE_MASK, "plain": pb.PRIVACY_MODE_PLAIN, "he": pb.PRIVACY_MODE_HE}


def _abort_on_error(method):
    """Turns a CoordinatorError into the RPC's status (unary and server-streaming handlers alike)."""
    if method.__name__ in ("DownloadUpdate", "DownloadAggregate", "WatchRound"):
        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except CoordinatorError as err:
                log_event("call_refused", method=method.__name__, code=err.code.name, reason=str(err))
                context.abort(err.code, str(err))
        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except CoordinatorError as err:
            log_event("call_refused", method=method.__name__, code=err.code.name, reason=str(err))
            context.abort(err.code, str(err))
    return unary


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, rounds: Rounds, insecure: bool = False):
        self.rounds, self.config, self.insecure = rounds, rounds.config, insecure

    def _party(self, context) -> str | None:
        if self.insecure:
            return dict(context.invocation_metadata()).get(INSECURE_IDENTITY_KEY)
        return peer_common_name(context)

    # ------------------------------------------------------------------ conversions

    def status_message(self, round_id: int = 0) -> pb.RoundStatus:
        s = self.rounds.status(round_id)
        message = pb.RoundStatus(round_id=s["round_id"], phase=s["phase"], parties_alive=s["parties_alive"],
                                 parties_dropped=s["parties_dropped"], layers_completed=s["layers_completed"],
                                 failure_reason=s["failure_reason"], started_at=_timestamp(s["started_at"]),
                                 updated_at=_timestamp(s["updated_at"]),
                                 phase_deadline=_timestamp(s["phase_deadline"]))
        if s["current_layer"] is not None:
            message.current_layer = s["current_layer"]
        return message

    def parameters_message(self, round_id: int = 0) -> pb.RoundParameters:
        cfg, p = self.config, self.rounds.parameters(round_id)
        d = cfg.deadlines
        return pb.RoundParameters(
            federation_id=cfg.federation_id, round_id=p["round_id"], schedule=_SCHEDULES[cfg.schedule],
            privacy_mode=_PRIVACY[cfg.privacy], roster=p["roster"], threshold=p["threshold"],
            min_parties=cfg.min_parties,
            layers=[pb.LayerSpec(layer=l.layer, module_name=l.module_name, d_out=l.d_out, d_in=l.d_in) for l in cfg.layers],
            scale_bits=p["scale_bits"], per_party_bound=p["per_party_bound"], chunk_bytes=cfg.chunk_bytes,
            deadlines=pb.PhaseDeadlines(**{k: _duration(v) for k, v in d.items()}),
            model_fingerprint=cfg.model_fingerprint, hparams_fingerprint=cfg.hparams_fingerprint,
            c0_fingerprint=cfg.c0_fingerprint, he=pb.HeParameters(**p["he"]) if p["he"] else None,
        )

    # ------------------------------------------------------------------ RPCs

    @_abort_on_error
    def JoinFederation(self, request, context):
        party = self._party(context)
        round_id = self.rounds.join(party, request.federation_id, request.model_fingerprint,
                                    request.hparams_fingerprint, request.c0_fingerprint)
        return cpb.JoinFederationResponse(party_id=party, parameters=self.parameters_message(round_id),
                                          status=self.status_message(round_id))

    @_abort_on_error
    def AdvertiseKeys(self, request, context):
        party = self._party(context)
        retry = self.rounds.advertise(party, request.round_id, request.mask_public_key, request.share_public_key,
                                      request.certificate_pem, request.signature)
        return cpb.AdvertiseKeysResponse(party_id=party, already_advertised=retry)

    @_abort_on_error
    def ListKeyAdvertisements(self, request, context):
        adverts = self.rounds.list_advertisements(self._party(context), request.round_id)
        return cpb.ListKeyAdvertisementsResponse(advertisements=[
            cpb.KeyAdvertisement(party_id=a["party"], mask_public_key=a["mask_pk"], share_public_key=a["share_pk"],
                                 certificate_pem=a["certificate_pem"], signature=a["signature"]) for a in adverts])

    @_abort_on_error
    def SubmitEncryptedShares(self, request, context):
        shares = [(s.sender_party_id, s.recipient_party_id, s.ciphertext) for s in request.shares]
        count, retry = self.rounds.submit_shares(self._party(context), request.round_id, shares)
        return cpb.SubmitEncryptedSharesResponse(accepted_count=count, already_submitted=retry)

    @_abort_on_error
    def ListEncryptedShares(self, request, context):
        shares = self.rounds.list_shares(self._party(context), request.round_id)
        return cpb.ListEncryptedSharesResponse(shares=[
            cpb.EncryptedShare(sender_party_id=s, recipient_party_id=r, ciphertext=c) for s, r, c in shares])

    @_abort_on_error
    def PublishHeContext(self, request, context):
        boxes = [(s.sender_party_id, s.recipient_party_id, s.ciphertext) for s in request.secret_contexts]
        retry = self.rounds.publish_he_context(self._party(context), request.round_id, request.public_context, boxes)
        return cpb.PublishHeContextResponse(already_published=retry)

    @_abort_on_error
    def GetHeContext(self, request, context):
        party = self._party(context)
        dealer, public, box = self.rounds.he_context(party, request.round_id)
        sealed = None if box is None else cpb.EncryptedShare(sender_party_id=dealer, recipient_party_id=party,
                                                             ciphertext=box)
        return cpb.GetHeContextResponse(dealer_party_id=dealer, public_context=public, secret_context=sealed)

    @_abort_on_error
    def UploadContribution(self, request_iterator, context):
        party = self._party(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first message of an upload must be its header")
        h = first.header
        session = self.rounds.begin_upload(party, h.round_id, h.layer, h.tensor, list(h.shape), h.encoding,
                                           h.total_bytes, h.sha256)
        try:  # chunks go to the staging file as they arrive: an upload is never held in memory
            for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument("a second header in one upload stream; send one header, then chunks")
                chunk = message.chunk
                session.add_chunk(chunk.offset, chunk.data, chunk.sha256)
        except BaseException:
            session.discard()
            raise
        retry = self.rounds.accept_upload(session)
        return cpb.UploadContributionResponse(received_bytes=session.total_bytes, sha256=session.sha256,
                                              already_accepted=retry)

    @_abort_on_error
    def GetUnmaskingPlan(self, request, context):
        layer = request.layer if request.HasField("layer") else None
        survivors, dropped = self.rounds.unmasking_plan(self._party(context), request.round_id, layer)
        return cpb.GetUnmaskingPlanResponse(survivors=survivors, dropped=dropped)

    @_abort_on_error
    def SubmitUnmaskingShares(self, request, context):
        layer = request.layer if request.HasField("layer") else None
        shares = [(s.owner_party_id, s.kind, s.x, s.y) for s in request.shares]
        count, complete = self.rounds.submit_reveals(self._party(context), request.round_id, layer, shares)
        return cpb.SubmitUnmaskingSharesResponse(accepted_count=count, unmasking_complete=complete)

    def _stream_file(self, response_type, header: pb.PayloadHeader, path, start_offset: int):
        """Header, then the file from start_offset in chunks of chunk_bytes (a resumable download)."""
        total = path.stat().st_size
        if start_offset > total:
            raise InvalidArgument(f"start_offset {start_offset} is beyond the payload's {total} bytes")
        header.total_bytes = total
        yield response_type(header=header)
        offset = start_offset
        with open(path, "rb") as handle:
            handle.seek(offset)
            while data := handle.read(self.config.chunk_bytes):
                yield response_type(chunk=pb.PayloadChunk(offset=offset, data=data, sha256=hashlib.sha256(data).digest()))
                offset += len(data)

    @_abort_on_error
    def DownloadUpdate(self, request, context):
        party = self._party(context)
        path, digest, shape = self.rounds.result(party, request.round_id, request.layer)
        header = pb.PayloadHeader(round_id=request.round_id, layer=request.layer, tensor=pb.TENSOR_DELTA_W, shape=shape,
                                  encoding=pb.ENCODING_FLOAT64_LE, sha256=digest)
        yield from self._stream_file(cpb.DownloadUpdateResponse, header, path, request.start_offset)
        log_event("update_served", round=request.round_id, layer=request.layer, party=party,
                  bytes=path.stat().st_size - request.start_offset)

    @_abort_on_error
    def DownloadAggregate(self, request, context):
        party = self._party(context)
        path, digest, shape = self.rounds.aggregate(party, request.round_id, request.layer, request.tensor)
        header = pb.PayloadHeader(round_id=request.round_id, layer=request.layer, tensor=request.tensor, shape=shape,
                                  encoding=pb.ENCODING_CKKS, sha256=digest)
        yield from self._stream_file(cpb.DownloadAggregateResponse, header, path, request.start_offset)
        log_event("aggregate_served", round=request.round_id, layer=request.layer, party=party,
                  tensor=pb.Tensor.Name(request.tensor), bytes=path.stat().st_size - request.start_offset)

    @_abort_on_error
    def GetRound(self, request, context):
        self.rounds._member(self._party(context))
        round_id = request.round_id or self.rounds.status()["round_id"]
        return cpb.GetRoundResponse(status=self.status_message(round_id), parameters=self.parameters_message(round_id))

    @_abort_on_error
    def WatchRound(self, request, context):
        self.rounds._member(self._party(context))
        round_id = request.round_id or self.rounds.status()["round_id"]
        last = None
        while context.is_active() and not self.rounds.closed:
            version = self.rounds.version
            status = self.status_message(round_id)
            seen = (status.phase, status.current_layer if status.HasField("current_layer") else None,
                    tuple(status.parties_alive), tuple(status.parties_dropped), tuple(status.layers_completed))
            if seen != last:
                last = seen
                yield cpb.WatchRoundResponse(status=status)
            if status.phase in TERMINAL:
                return
            self.rounds.wait_for_change(version, 1.0)  # bounded: notices a cancelled client within 1 s

    @_abort_on_error
    def ReportApplied(self, request, context):
        all_applied, pending = self.rounds.report_applied(self._party(context), request.round_id, request.layer,
                                                          request.sha256, request.aggregate_digest)
        return cpb.ReportAppliedResponse(all_applied=all_applied, parties_pending=pending)

