import os
import stat

import pytest

from collabedit_secure.party.queue import EditQueue, QueueFullError, to_record


def record(case_id, **over):
    fields = dict(prompt="{} is a citizen of", subject="Ann Smith", target_new="France", target_true="Spain",
                  paraphrase_prompts=["Ann Smith holds a passport of"], neighborhood_prompts=["Bo is a citizen of"])
    fields.update(over)
    return to_record(case_id, **fields)


@pytest.fixture
def queue(tmp_path):
    q = EditQueue(tmp_path / "queue.db")
    yield q
    q.close()


def test_file_is_private_and_wal(queue, tmp_path):
    assert stat.S_IMODE(os.stat(tmp_path / "queue.db").st_mode) == 0o600
    queue.submit([record("1")])
    assert queue._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for extra in ("queue.db-wal", "queue.db-shm"):
        if (tmp_path / extra).exists():
            assert stat.S_IMODE(os.stat(tmp_path / extra).st_mode) == 0o600


def test_submit_validates_each_request_with_reasons(queue):
    accepted, rejected = queue.submit([
        record("1"), record("2", prompt="no slot"), record("3", prompt="{} and {}"), record("1"),
        record("", subject="x"), record("4", subject="  "), record("5", target_new="{bad}")])
    assert accepted == ["1"]
    reasons = dict(rejected)
    assert "exactly one '{}'" in reasons["2"] and "found 2" in reasons["3"]
    assert "already submitted" in [r for c, r in rejected if c == "1"][0]
    assert "case_id must be a non-empty string" in reasons[""]
    assert "subject is empty" in reasons["4"]
    assert "brace" in reasons["5"]
    assert queue.submit([record("1")])[1][0][1].startswith("case_id '1' already submitted")


def test_lifecycle_take_finish_requeue(queue):
    queue.submit([record(str(i), subject=f"S{i}") for i in range(5)])
    batch = queue.take_batch(7, limit=3)
    assert [e.case_id for e in batch] == ["0", "1", "2"] and all(e.round_id == 7 for e in batch)
    assert batch[0].request().target_new == " France"
    assert queue.count("QUEUED") == 2 and queue.count("IN_ROUND") == 3
    assert queue.finish_round(7, "QUEUED") == 3  # failed round: back in line, oldest first
    assert [e.case_id for e in queue.list("QUEUED")] == ["0", "1", "2", "3", "4"]
    queue.take_batch(8)
    queue.finish_round(8, "APPLIED")
    assert {e.state for e in queue.list()} == {"APPLIED"} and {e.round_id for e in queue.list()} == {8}
    queue.submit([record("9")])
    queue.take_batch(9)
    queue.finish_round(9, "FAILED", "overflow")
    assert queue.list("FAILED")[0].error == "overflow"
    with pytest.raises(ValueError, match="state must be"):
        queue.list("DONE")


def test_interrupted_round_is_requeued_on_reopen(tmp_path):
    q = EditQueue(tmp_path / "q.db")
    q.submit([record("a")])
    q.take_batch(3)
    q.close()
    q = EditQueue(tmp_path / "q.db")
    assert q.requeue_interrupted() == 1 and q.list("QUEUED")[0].round_id == 0
    q.close()


def test_queue_full_queues_nothing(tmp_path):
    q = EditQueue(tmp_path / "q.db", max_queued=2)
    q.submit([record("a"), record("b")])
    with pytest.raises(QueueFullError, match="limit of 2"):
        q.submit([record("c")])
    assert q.count() == 2
    q.close()


def test_round_results(queue):
    assert queue.result() is None
    queue.save_result(2, {"round_id": 2, "phase": "FAILED"})
    queue.save_result(3, {"round_id": 3, "phase": "COMPLETED"})
    assert queue.result()["round_id"] == 3 and queue.result(2)["phase"] == "FAILED"
