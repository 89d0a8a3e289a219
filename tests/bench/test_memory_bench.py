"""`collabedit bench memory` at a tiny layer through the CLI, its data writer, and the party's bounded
upload path: one tensor (a block of it) at a time, the same bytes on the wire as before."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("collabedit_secure.coordinator.server")

from collabedit_secure.bench import memory  # noqa: E402
from collabedit_secure.kernels import pack_upper  # noqa: E402
from collabedit_secure.party import round_client as rc  # noqa: E402
from collabedit_secure.blockio import memmap_npz, write_npz  # noqa: E402
from collabedit_secure.protocol.encoding import Binding  # noqa: E402
from collabedit_secure.protocol.fixedpoint import RoundNumerics  # noqa: E402
from collabedit_secure.protocol.keys import RoundKeys  # noqa: E402
from collabedit_secure.protocol.masking import masked_upload  # noqa: E402
from collabedit_secure.rpc.generated import common_pb2 as cpb  # noqa: E402
from collabedit_secure.rpc.generated import coordinator_pb2 as pb  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
D_IN, D_OUT = 48, 12


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "collabedit_secure.cli", "bench", "memory", "--dims", f"{D_IN},{D_OUT}",
           "--modes", "mask", "--timeout", "120", "--json", str(out / "memory.json")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"report": json.loads((out / "memory.json").read_text()), "stdout": done.stdout, "stderr": done.stderr}


def test_cli_reports_every_process_against_one_s_kk(bench):
    report = bench["report"]
    assert report["benchmark"] == "memory" and report["failed"] == []
    assert report["settings"]["d_in"] == D_IN and report["settings"]["d_out"] == D_OUT
    assert report["machine"]["cores"] and "git_commit" in report["machine"]
    (row,) = report["configurations"]
    assert (row["mode"], row["parties"], row["layers"], row["status"]) == ("mask", 2, 1, "ok"), row
    assert row["s_kk_bytes"] == D_IN * D_IN * 8
    assert set(row["processes"]) == {"coordinator", "p00", "p01"}
    for name, process in row["processes"].items():
        assert 10e6 < process["peak_rss_bytes"] < 100e9, (name, process)
        assert process["round_peak_rss_bytes"] <= 1.2 * process["peak_rss_bytes"], (name, process)
        assert 0 < process["startup_peak_rss_bytes"] <= 1.2 * process["peak_rss_bytes"], (name, process)
        sampled = process["sampled"]
        assert sampled["samples"] > 0 and 0 < sampled["max_rss_bytes"] <= 1.2 * process["peak_rss_bytes"]
        assert sampled["anon_bytes_at_max"] + sampled["file_bytes_at_max"] <= sampled["max_rss_bytes"] + 4096 * 1024
        assert sampled["timeline"] and all(len(point) == 4 for point in sampled["timeline"])
    peak = row["peak_rss_bytes"]
    assert peak["party_max"] == max(row["processes"][p]["peak_rss_bytes"] for p in ("p00", "p01"))
    assert peak["coordinator"] == row["processes"]["coordinator"]["peak_rss_bytes"]
    for who in ("party_max", "coordinator"):
        assert row["ratio_to_s_kk"][who] == pytest.approx(peak[who] / row["s_kk_bytes"])
        assert row["round_ratio_to_s_kk"][who] == pytest.approx(row["round_peak_rss_bytes"][who] / row["s_kk_bytes"])
        # a 48-wide layer is 18 kB: the interpreter alone is thousands of times that
        assert row["within_target"][who] is False and row["ratio_to_s_kk"][who] > memory.TARGET
    assert sorted(report["over_target"]) == ["mask n=2 coordinator", "mask n=2 party_max"]
    lines = bench["stdout"].splitlines()
    assert lines[0].split()[:6] == ["mode", "n", "L", "d_in", "d_out", "S_KK"]
    assert lines[1].split()[:5] == ["mask", "2", "1", str(D_IN), str(D_OUT)]
    assert "mask n=2" in bench["stderr"] and "done in" in bench["stderr"]


def test_statistics_are_written_a_block_at_a_time_and_read_memory_mapped(tmp_path, monkeypatch):
    from collabedit_secure.editing.covariance import import_memit_stats

    monkeypatch.setattr(memory, "BLOCK_ELEMENTS", 100)  # many blocks even at this size
    d_in, d_out = 40, 7
    data = memory.write_data(tmp_path, d_in, d_out, 2, [0, 1])
    for party, path in enumerate(data["stats"]):
        stats = memmap_npz(path, min_bytes=0)
        for layer in (0, 1):
            k, r = memory._keys(d_in, d_out, party, layer)
            assert isinstance(stats[f"s_kk_{layer}"], np.memmap)
            np.testing.assert_allclose(stats[f"s_kk_{layer}"], pack_upper(k @ k.T), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(stats[f"s_rk_{layer}"], r @ k.T, rtol=1e-12, atol=1e-12)
        with np.load(path) as plain:  # an ordinary npz to numpy too
            np.testing.assert_array_equal(plain["s_rk_1"], stats["s_rk_1"])
    moment = import_memit_stats(next((data["c0"]).glob("*h.1.*"))).moment().numpy()
    assert moment.shape == (d_in, d_in) and np.linalg.eigvalsh(moment).min() > 0.4


# ---------------------------------------------------------------------------------------- the party


class StreamingCoordinator:
    """Just enough of the coordinator for one parallel step: records each upload's bytes (hashed as
    they stream), then serves a ΔW per layer."""

    def __init__(self, layers: dict[int, tuple[int, int]]):
        self.layers, self.uploads = layers, {}
        self.deltas = {layer: np.arange(d_out * d_in, dtype="<f8").tobytes() for layer, (d_out, d_in) in layers.items()}

    def GetRound(self, request, timeout=None, metadata=None):
        done = len(self.uploads) == 2 * len(self.layers)
        phase = cpb.ROUND_PHASE_DOWNLOADING if done else cpb.ROUND_PHASE_UPLOADING
        return pb.GetRoundResponse(status=cpb.RoundStatus(round_id=1, phase=phase))

    def UploadContribution(self, messages, timeout=None, metadata=None):
        header, digest, size = None, hashlib.sha256(), 0
        for message in messages:
            if message.HasField("header"):
                header = message.header
                continue
            assert message.chunk.offset == size and len(message.chunk.data) <= 4096
            digest.update(message.chunk.data)
            size += len(message.chunk.data)
        assert size == header.total_bytes and digest.digest() == header.sha256
        self.uploads[(header.layer, cpb.Tensor.Name(header.tensor))] = header.sha256
        return pb.UploadContributionResponse(received_bytes=size, sha256=header.sha256)

    def delta(self, layer: int) -> bytes:
        return self.deltas[layer]

    def DownloadUpdate(self, request, timeout=None, metadata=None):
        payload = self.delta(request.layer)
        d_out, d_in = self.layers[request.layer]
        yield pb.DownloadUpdateResponse(header=cpb.PayloadHeader(
            round_id=1, layer=request.layer, tensor=cpb.TENSOR_DELTA_W, shape=[d_out, d_in],
            encoding=cpb.ENCODING_FLOAT64_LE, total_bytes=len(payload), sha256=hashlib.sha256(payload).digest()))
        for offset in range(request.start_offset, len(payload), 4096):
            piece = payload[offset:offset + 4096]
            yield pb.DownloadUpdateResponse(chunk=cpb.PayloadChunk(offset=offset, data=piece,
                                                                   sha256=hashlib.sha256(piece).digest()))


def _client(privacy: int, layers: dict[int, tuple[int, int]], tmp_path: Path):
    stub = StreamingCoordinator(layers)
    client = rc.RoundClient(stub, None, None, "fed", {}, party_id="a", sleep=lambda s: None, spool_dir=tmp_path)
    client.params = cpb.RoundParameters(
        federation_id="fed", round_id=1, schedule=cpb.SCHEDULE_PARALLEL, privacy_mode=privacy, roster=["a", "b", "c"],
        threshold=2, layers=[cpb.LayerSpec(layer=k, module_name=f"m{k}", d_out=o, d_in=i) for k, (o, i) in layers.items()],
        scale_bits=30, per_party_bound=(2**63 - 1) // 3, chunk_bytes=4096)
    client.keys = RoundKeys.generate()
    client.peer_mask_keys = {p: RoundKeys.generate().mask_public_key for p in ("b", "c")}
    client.steps_done = 1  # not the round's first step: no unmasking to take part in
    return client, stub


def _statistics(tmp_path: Path, layers: dict[int, tuple[int, int]]) -> dict:
    """Contributions as a synthetic party has them: memory-mapped from an npz."""
    rng = np.random.default_rng(0)
    arrays = {}
    for layer, (d_out, d_in) in layers.items():
        arrays[f"s_kk_{layer}"] = rng.uniform(-1, 1, d_in * (d_in + 1) // 2)
        arrays[f"s_rk_{layer}"] = rng.uniform(-1, 1, (d_out, d_in))
    stats = memmap_npz(write_npz(tmp_path / "stats.npz", arrays))
    return {layer: (stats[f"s_kk_{layer}"], stats[f"s_rk_{layer}"]) for layer in layers}


def _on_gpu(contributions: dict) -> dict:
    import torch

    return {layer: tuple(torch.from_numpy(np.array(v)).cuda() for v in pair) for layer, pair in contributions.items()}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("privacy, where", [(cpb.PRIVACY_MODE_MASK, "host"), (cpb.PRIVACY_MODE_PLAIN, "host"),
                                            pytest.param(cpb.PRIVACY_MODE_MASK, "gpu", marks=pytest.mark.skipif(
                                                not _has_gpu(), reason="no usable GPU (torch.cuda.is_available())")),
                                            pytest.param(cpb.PRIVACY_MODE_PLAIN, "gpu", marks=pytest.mark.skipif(
                                                not _has_gpu(), reason="no usable GPU (torch.cuda.is_available())"))],
                         ids=["mask", "plain", "mask-gpu", "plain-gpu"])
def test_a_party_streams_one_block_at_a_time_and_sends_the_same_bytes(tmp_path, privacy, where):
    """Host statistics are read a block at a time (memory-mapped); a GPU party's are checked and
    masked on the GPU by the CUDA kernels (plain: copied to the host): the same bytes either way."""
    layers = {0: (256, 1024), 1: (256, 1024)}  # per layer: 4.2 MB of S_KK's triangle, 2.1 MB of S_RK
    client, stub = _client(privacy, layers, tmp_path / "spool")
    contributions = _statistics(tmp_path, layers)
    if where == "gpu":
        contributions = _on_gpu(contributions)
    payloads = sum(8 * int(np.prod(v.shape)) for pair in contributions.values() for v in pair)
    received = {}
    tracemalloc.start()
    try:
        client.exchange_step({0: "m0", 1: "m1"}, contributions, on_delta=lambda layer, delta: received.setdefault(
            layer, hashlib.sha256(delta).digest()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: every payload of the step was encoded (and copied into bytes) before the first was sent,
    # more than `payloads`. Now: a block of values and one ΔW (2.1 MB, downloaded into its array).
    if where == "host":  # (a GPU party's plain upload copies each tensor to the host first)
        assert peak < payloads / 4, (peak, payloads)
    assert received == {layer: hashlib.sha256(stub.delta(layer)).digest() for layer in layers}
    assert client.digests == received
    spool = tmp_path / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []  # spooled payloads leave nothing behind
    numerics = RoundNumerics(3, 30, (2**63 - 1) // 3)
    for layer, pair in contributions.items():
        for tensor, values in zip(rc.TENSORS, pair):
            values = values.cpu().numpy() if where == "gpu" else np.array(values)
            if privacy == cpb.PRIVACY_MODE_MASK:
                binding = Binding("fed", 1, layer, tensor, values.shape)
                expected = masked_upload(values, numerics, binding, "a", client.keys, client.peer_mask_keys)
                data = expected.astype("<u8").tobytes()
            else:
                data = values.astype("<f8").tobytes()
            assert stub.uploads[(layer, tensor)] == hashlib.sha256(data).digest(), (layer, tensor)
