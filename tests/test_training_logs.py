"""The one reader of generator logs: last write of a step wins, torn lines skipped, tail means."""

import json

import pytest

from deltalora.training.logs import read_log, tail_mean, values


def test_read_log_last_write_wins_and_tail_mean(tmp_path):
    p = tmp_path / "log.jsonl"
    recs = [{"step": s, "loss_weights": float(s), "delta_cosine": None if s < 5 else 0.1 * s} for s in range(20)]
    recs.insert(
        3, {"step": 2, "loss_weights": 99.0, "delta_cosine": None}
    )  # a resumed run rewrote step 2 ... then 2 again
    recs.append({"step": 2, "loss_weights": 2.5, "delta_cosine": None})
    p.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"step": 20, "loss_w')
    curves = read_log(p)
    assert list(curves) == list(range(20)) and curves[2]["loss_weights"] == 2.5
    assert tail_mean(curves, "loss_weights") == pytest.approx((18 + 19) / 2)  # last 10 % of 20 steps
    assert tail_mean(curves, "loss_weights", frac=0.01) == 19.0  # at least one step
    assert values(curves, "delta_cosine")[0] == pytest.approx(0.5) and len(values(curves, "delta_cosine")) == 15
    assert tail_mean(curves, "missing") is None


def test_read_log_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_log(tmp_path / "nope.jsonl")
