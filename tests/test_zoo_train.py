from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from deltalora.backbones.precision import PrecisionDecision
from deltalora.config import LoraSpec
from deltalora.errors import ConfigError
from deltalora.lora import load_adapter
from deltalora.zoo import load_zoo_config
from deltalora.zoo.train import TeacherTrainConfig, collate, teacher_precision, tokenize_pairs, train_teacher

PAIRS = [(f"<|im_start|>user\nColour of item {i}?<|im_end|>\n<|im_start|>assistant\n", "blue") for i in range(16)]
CFG = TeacherTrainConfig(
    lora=LoraSpec(rank=4, alpha=8, targets="q,v,up,down"),
    steps=30,
    batch_size=4,
    lr=2e-2,
    warmup_steps=2,
    checkpoints=2,
    checkpoint_every=10,
)


def test_completion_mask_covers_exactly_the_target(tiny_qwen2):
    tok = tiny_qwen2.tokenizer
    data = tokenize_pairs(tok, [("Q: 1+1?\nA: ", "2"), ("Q: hello?\nA: ", "hi")], 64)
    ids, mask, predict = collate(data, tok.pad_token_id)
    for i, (seq, start) in enumerate(data):
        targets = ids[i, 1:][predict[i, :-1]]
        assert tok.decode(targets) == ["2", "hi"][i] + tok.eos_token
        assert int(mask[i].sum()) == len(seq)


def test_teacher_learns_and_saves_tail_checkpoints(tiny_qwen2, tmp_path):
    before = {k: v.clone() for k, v in tiny_qwen2.model.state_dict().items()}
    losses = []
    ckpts = train_teacher(tiny_qwen2, PAIRS, CFG, tmp_path / "t", seed=0, progress=lambda s, loss: losses.append(loss))
    assert [c.step for c in ckpts] == [20, 30]
    # a random tiny model's logits are bounded by its final norm, so ~4.4 nats is its floor here
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    w = load_adapter(ckpts[-1].path, arch=tiny_qwen2.arch)
    assert all(t.abs().sum() > 0 for t in w.tensors())
    after = tiny_qwen2.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone is never touched
    assert not any(p.requires_grad for p in tiny_qwen2.model.parameters())


def test_teacher_training_is_deterministic(tiny_qwen2, tmp_path):
    cfg = CFG.model_copy(update={"steps": 6, "checkpoints": 1})
    a = train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "a", seed=3)[-1].path
    b = train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "b", seed=3)[-1].path
    c = train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "c", seed=4)[-1].path
    read = lambda p: (p / "adapter_model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(b) and read(a) != read(c)


class _Killed(Exception):
    pass


def _kill_at(step_to_die: int):
    def progress(step, loss):
        if step == step_to_die:
            raise _Killed

    return progress


def test_a_killed_run_resumes_bit_identical(tiny_qwen2, tmp_path):
    cfg = CFG.model_copy(update={"steps": 12, "checkpoints": 2, "checkpoint_every": 4})  # tail at 8 and 12
    read = lambda p: (p / "adapter_model.safetensors").read_bytes()  # noqa: E731
    ref = train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "ref", seed=5)
    state = tmp_path / "state"
    with pytest.raises(_Killed):  # dies at step 10: the state of step 9 (save_every 3) and checkpoint 8 are kept
        train_teacher(
            tiny_qwen2, PAIRS, cfg, tmp_path / "a", seed=5, resume_dir=state, save_every=3, progress=_kill_at(10)
        )
    assert (state / "state").is_dir() and (state / "step8").is_dir()
    steps = []
    got = train_teacher(
        tiny_qwen2,
        PAIRS,
        cfg,
        tmp_path / "a",
        seed=5,
        resume_dir=state,
        save_every=3,
        progress=lambda s, loss: steps.append(s),
    )
    assert steps == [10, 11, 12]  # continued after the saved step 9, not from the start
    assert [c.step for c in got] == [8, 12] and all(c.path.parent == tmp_path / "a" for c in got)
    assert [read(c.path) for c in got] == [read(c.path) for c in ref]
    assert [c.train_loss for c in got] == [c.train_loss for c in ref]
    assert not state.exists()  # the finished run leaves no state behind


def test_a_state_of_another_run_is_refused(tiny_qwen2, tmp_path):
    cfg = CFG.model_copy(update={"steps": 6, "checkpoints": 1})
    state = tmp_path / "state"
    with pytest.raises(_Killed):
        train_teacher(
            tiny_qwen2, PAIRS, cfg, tmp_path / "a", seed=1, resume_dir=state, save_every=2, progress=_kill_at(4)
        )
    before = sorted(p.name for p in (state / "state").iterdir())
    with pytest.raises(ValueError, match=r"another run.*delete"):
        train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "b", seed=2, resume_dir=state, save_every=2)
    with pytest.raises(ValueError, match=r"another run.*delete"):
        train_teacher(tiny_qwen2, PAIRS[:8], cfg, tmp_path / "b", seed=1, resume_dir=state, save_every=2)
    with pytest.raises(ValueError, match=r"another run.*delete"):  # the same recipe from another init
        train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "b", seed=1, init_seed=9, resume_dir=state, save_every=2)
    assert sorted(p.name for p in (state / "state").iterdir()) == before  # refused, and nothing touched
    (state / "state" / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable training state"):
        train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "b", seed=1, resume_dir=state, save_every=2)


def _adapter_bytes(tiny_qwen2, tmp_path, name, **update):
    cfg = CFG.model_copy(update={"steps": 3, "checkpoints": 1, **update})
    (ck,) = train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / name, seed=0)
    w = load_adapter(ck.path)
    assert all(t.dtype == torch.float32 for t in w.tensors())  # the saved adapter stays fp32 whatever it trained in
    return (ck.path / "adapter_model.safetensors").read_bytes()


def test_teacher_trains_in_the_resolved_precision(tiny_qwen2, tmp_path, monkeypatch):
    import deltalora.backbones.precision as prec

    fp32 = _adapter_bytes(tiny_qwen2, tmp_path, "fp32", precision="float32")
    bf16 = _adapter_bytes(tiny_qwen2, tmp_path, "bf16", precision="bf16")
    assert fp32 != bf16  # bf16 autocast really changes the computation
    for want, ref in (("float32", fp32), ("bfloat16", bf16)):  # auto trains in whatever the resolver decides
        monkeypatch.setattr(prec, "_DECIDED", {})
        monkeypatch.setattr(prec, "_decide_auto", lambda device, w=want: PrecisionDecision(getattr(torch, w), "mocked"))
        assert _adapter_bytes(tiny_qwen2, tmp_path, f"auto-{want}", precision="auto") == ref


def test_teacher_precision_only_narrows(monkeypatch):
    import deltalora.backbones.precision as prec

    monkeypatch.setattr(prec, "_DECIDED", {})
    monkeypatch.setattr(prec, "_decide_auto", lambda device: PrecisionDecision(torch.float32, "mocked"))
    cpu = torch.device("cpu")
    assert teacher_precision("bf16", cpu, torch.float32).dtype == torch.bfloat16
    assert teacher_precision("auto", cpu, torch.float32).dtype == torch.float32
    assert teacher_precision("auto", cpu, torch.bfloat16).dtype == torch.bfloat16  # bf16 weights: nothing to cast
    with pytest.raises(ConfigError, match="only narrows.*runtime dtype float32"):
        teacher_precision("float32", cpu, torch.bfloat16)


def test_precision_setting_and_its_deprecated_spelling(tmp_path):
    assert TeacherTrainConfig().precision == "auto"
    assert TeacherTrainConfig(precision="fp32").precision == "float32"
    assert TeacherTrainConfig(precision="BF16").precision == "bfloat16"
    assert TeacherTrainConfig(bf16_autocast=True).precision == "bfloat16"
    assert TeacherTrainConfig(bf16_autocast=False).precision == "float32"
    assert "bf16_autocast" not in TeacherTrainConfig(bf16_autocast=True).model_dump()
    for old, new in (("bf16_autocast", "precision"), ("shared_init", "init")):
        with pytest.raises(ValueError, match=f"{old} .* must be true or false, got 'yes'; better write {new}:"):
            TeacherTrainConfig(**{old: "yes"})
    with pytest.raises(ValidationError, match="not one of auto"):
        TeacherTrainConfig(precision="fp64")
    # in a YAML: one line naming the file and both keys
    zoo = Path(__file__).parent / "fixtures" / "zoo"
    text = (zoo / "tiny.yaml").read_text().replace("suite: suite.yaml", f"suite: {zoo / 'suite.yaml'}")
    old = tmp_path / "old.yaml"
    old.write_text(text + "  bf16_autocast: true\n")
    assert load_zoo_config(old).teacher.precision == "bfloat16"
    both = tmp_path / "both.yaml"
    both.write_text(text + "  bf16_autocast: true\n  precision: auto\n")
    with pytest.raises(ConfigError) as err:
        load_zoo_config(both)
    msg = str(err.value)
    assert str(both) in msg and "precision" in msg and "bf16_autocast" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="bf16_autocast"):
        load_zoo_config(old, {"teacher": {"precision": "float32"}})  # an override on an old YAML names the clash


def test_linears_cast_once_per_job_train_exactly_as_autocast_does(tiny_qwen2, tmp_path, monkeypatch):
    """bf16 teachers hold the frozen linears in bf16 for the job instead of autocast casting them in every call: the
    adapters are byte-identical to plain autocast over the fp32 weights, and the backbone gets its fp32 tensors back."""
    import contextlib

    import deltalora.zoo.train as zt  # where the teacher trainer looks narrowed_linears up

    before = {k: v.clone() for k, v in tiny_qwen2.model.state_dict().items()}
    seen = []
    real = zt.narrowed_linears

    def spy(model, dtype):
        seen.append(dtype)
        return real(model, dtype)

    monkeypatch.setattr(zt, "narrowed_linears", spy)
    once = _adapter_bytes(tiny_qwen2, tmp_path, "once", precision="bf16")
    assert seen == [torch.bfloat16]
    monkeypatch.setattr(zt, "narrowed_linears", lambda model, dtype: contextlib.nullcontext())
    assert _adapter_bytes(tiny_qwen2, tmp_path, "every-call", precision="bf16") == once
    after = tiny_qwen2.model.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(RuntimeError, match="boom"), real(tiny_qwen2.model, torch.bfloat16):
        assert tiny_qwen2.model.lm_head.weight.dtype == torch.bfloat16
        raise RuntimeError("boom")
    assert tiny_qwen2.model.lm_head.weight.dtype == torch.float32
