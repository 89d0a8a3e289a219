"""RoundClient's local refusals, against a fake coordinator stub that records what was sent."""

from __future__ import annotations

import numpy as np
import pytest

from collabedit_secure.protocol.fixedpoint import FixedPointOverflowError
from collabedit_secure.protocol.keys import RoundKeys, sign_advertisement
from collabedit_secure.protocol.recovery import split_round_secrets
from collabedit_secure.party.round_client import RoundClient, RoundError
from collabedit_secure.rpc.generated import common_pb2 as cpb
from collabedit_secure.rpc.generated import coordinator_pb2 as pb
from collabedit_secure.rpc.tls import init_federation_pki

ROSTER = ["a", "b", "c"]


class FakeStub:
    def __init__(self, status):
        self.status, self.calls = status, []

    def GetRound(self, request, timeout=None, metadata=None):
        self.calls.append("GetRound")
        return pb.GetRoundResponse(status=self.status)

    def __getattr__(self, name):  # any other RPC: recorded, then refused loudly
        def call(request, timeout=None, metadata=None):
            self.calls.append(name)
            raise AssertionError(f"{name} must not be called")
        return call


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_federation_pki(tmp_path_factory.mktemp("pki"), ROSTER)


def client_for(pki, me="a", privacy=cpb.PRIVACY_MODE_MASK, bound=1000):
    status = cpb.RoundStatus(round_id=1, phase=cpb.ROUND_PHASE_UPLOADING, current_layer=0)
    stub = FakeStub(status)
    identity = pki.identity(me)
    client = RoundClient(stub, identity, identity.ca_pem, "fed", {}, sleep=lambda s: None)
    client.params = cpb.RoundParameters(
        federation_id="fed", round_id=1, schedule=cpb.SCHEDULE_SEQUENTIAL, privacy_mode=privacy, roster=ROSTER,
        threshold=2, layers=[cpb.LayerSpec(layer=0, module_name="m0", d_out=2, d_in=2)], scale_bits=8,
        per_party_bound=bound, chunk_bytes=64)
    client.keys = RoundKeys.generate()
    client.peer_mask_keys = {p: RoundKeys.generate().mask_public_key for p in ROSTER if p != me}
    return client, stub


def test_overflow_is_refused_before_anything_is_sent(pki):
    client, stub = client_for(pki, bound=1000)  # |x| * 2^8 must stay <= 1000: |x| < 3.9
    s_kk = np.array([1.0, 2.0, 3.0])
    s_rk = np.array([[1.0, 2.0], [50.0, 1.0]])
    with pytest.raises(FixedPointOverflowError) as error:
        client.exchange_step({0: "m0"}, {0: (s_kk, s_rk)})
    assert error.value.tensor == "TENSOR_S_RK" and error.value.bound == 1000 and error.value.index == (1, 0)
    assert "nothing was sent" in str(error.value)
    assert set(stub.calls) == {"GetRound"}  # no UploadContribution at all, not even for S_KK


def test_wrong_shape_is_refused_before_sending(pki):
    client, stub = client_for(pki)
    with pytest.raises(ValueError, match="TENSOR_S_KK_UPPER: shape"):
        client.exchange_step({0: "m0"}, {0: (np.zeros(4), np.zeros((2, 2)))})
    assert set(stub.calls) == {"GetRound"}


def test_unmasking_plan_asking_for_both_kinds_is_refused(pki):
    client, _ = client_for(pki)
    client.shares = split_round_secrets(client.keys, ROSTER, 2)  # stand-ins for the shares held
    with pytest.raises(RoundError, match=r"both share kinds of \['b'\]"):
        client.reveals_for(["a", "b"], ["b", "c"])
    reveals = client.reveals_for(["a", "b"], ["c"])
    assert [(r.owner_party_id, r.kind, r.x) for r in reveals] == [
        ("a", pb.SHARE_KIND_SELF_MASK_SEED, 1), ("b", pb.SHARE_KIND_SELF_MASK_SEED, 1),
        ("c", pb.SHARE_KIND_MASK_KEY, 1)]
    assert all(len(r.y) == 66 for r in reveals)
    with pytest.raises(RoundError, match="other kind was already revealed for 'c'"):
        client.reveals_for(["a", "c"], [])  # a later plan must not complete c's unmasking either
    with pytest.raises(RoundError, match="not list this party"):
        client.reveals_for(["b"], ["a"])


def _advert(pki, party, keys, round_id=1):
    identity = pki.identity(party)
    adv = sign_advertisement(identity.private_key, identity.certificate_pem, "fed", round_id, party, keys)
    return pb.KeyAdvertisement(party_id=party, mask_public_key=adv.mask_public_key,
                               share_public_key=adv.share_public_key,
                               certificate_pem=adv.certificate_pem.decode(), signature=adv.signature)


def test_substituted_or_forged_keys_abort_the_round_locally(pki):
    client, _ = client_for(pki)
    keys = {p: RoundKeys.generate() for p in ROSTER}
    listed = [_advert(pki, p, keys[p]) for p in ROSTER]
    mine = sign_advertisement(pki.identity("a").private_key, pki.identity("a").certificate_pem, "fed", 1, "a",
                              keys["a"])
    assert set(client._verify_advertisements(listed, mine)) == set(ROSTER)

    forged = list(listed)  # the coordinator swaps b's mask key for its own
    forged[1] = pb.KeyAdvertisement(party_id="b", mask_public_key=RoundKeys.generate().mask_public_key,
                                    share_public_key=listed[1].share_public_key,
                                    certificate_pem=listed[1].certificate_pem, signature=listed[1].signature)
    with pytest.raises(RoundError, match="aborted locally: advertisement of 'b': signature does not verify"):
        client._verify_advertisements(forged, mine)

    other = RoundKeys.generate()  # a correctly signed advertisement of a, but not the keys a made
    swapped = [_advert(pki, "a", other), *listed[1:]]
    with pytest.raises(RoundError, match="not the ones this party advertised"):
        client._verify_advertisements(swapped, mine)

    replayed = [_advert(pki, p, keys[p], round_id=7) for p in ROSTER]  # another round's signatures
    with pytest.raises(RoundError, match="round 1"):
        client._verify_advertisements(replayed, mine)
