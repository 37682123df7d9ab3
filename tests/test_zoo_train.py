import torch

from deltalora.config import LoraSpec
from deltalora.lora import load_adapter
from deltalora.zoo.train import TeacherTrainConfig, collate, tokenize_pairs, train_teacher

PAIRS = [(f"<|im_start|>user\nColour of item {i}?<|im_end|>\n<|im_start|>assistant\n", "blue") for i in range(16)]
CFG = TeacherTrainConfig(
    lora=LoraSpec(rank=4, alpha=8, targets="q,v,up,down"), steps=30, batch_size=4, lr=2e-2,
    warmup_steps=2, checkpoints=2, checkpoint_every=10,
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
    ckpts = train_teacher(tiny_qwen2, PAIRS, CFG, tmp_path / "t", seed=0, progress=lambda s, l: losses.append(l))
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


def test_bf16_autocast_runs(tiny_qwen2, tmp_path):
    cfg = CFG.model_copy(update={"steps": 3, "checkpoints": 1, "bf16_autocast": True})
    (ck,) = train_teacher(tiny_qwen2, PAIRS, cfg, tmp_path / "bf", seed=0)
    assert load_adapter(ck.path).A  # saved adapter stays fp32 and valid
