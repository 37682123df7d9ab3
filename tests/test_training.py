"""Generator training: λ and LR schedules, the ΔW loss, differentiable Δ (gradient sanity), a short run on
a tiny zoo, exact resume, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from deltalora.deltas import DeltaProbe, remove_shared
from deltalora.generators import build_generator
from deltalora.generators.checkpoint import load_generator
from deltalora.lora import LoraWeights, derive_layout
from deltalora.training import (
    LambdaSchedule,
    TeacherDataset,
    TrainConfig,
    WeightLoss,
    delta_loss,
    lr_at,
    product_sq_norm,
    train_generator,
)
from deltalora.training.loop import batch_positions
from deltalora.training.state import TrainStateError
from tests.helpers import N_PROMPTS, SPEC, teacher_world


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_qwen2):
    return teacher_world(tmp_path_factory.mktemp("training"), tiny_qwen2)


def _train_set(world) -> TeacherDataset:
    return TeacherDataset(
        world["zoo"],
        world["conditioner"],
        world["spec"],
        cache=world["cache"],
        arch=world["arch"],
        split="train",
        heldout=["c"],
    )


def _cfg(**kw) -> TrainConfig:
    base = dict(
        generator="compact",
        generator_options={"trunk_width": 32, "head_hidden": 16, "basis_dim": 4},
        encoder="tiny-encoder",
        n_prompts=N_PROMPTS,
        steps=6,
        batch_size=3,
        delta_batch=2,
        lr=3e-3,
        warmup_steps=1,
        lam=LambdaSchedule(target=1.0, warmup_steps=1, ramp_steps=2),
        save_every=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_lambda_schedule_warmup_then_linear_ramp():
    lam = LambdaSchedule(target=2.0, warmup_steps=3, ramp_steps=4)
    assert [lam.at(s) for s in range(9)] == [0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert (
        LambdaSchedule(target=0.5, warmup_steps=2).at(1) == 0
        and LambdaSchedule(target=0.5, warmup_steps=2).at(2) == 0.5
    )
    assert LambdaSchedule().at(100) == 0


def test_lr_schedule_warmup_cosine():
    cfg = _cfg(steps=11, warmup_steps=2, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s) for s in range(11)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueError, match="delta_batch"):
        _cfg(batch_size=2, delta_batch=3)
    with pytest.raises(ValueError, match="warmup_steps"):
        _cfg(steps=3, warmup_steps=3)


def test_batch_order_is_a_seeded_stream_of_epoch_permutations():
    cfg = _cfg(batch_size=4)
    first = [batch_positions(cfg, 6, s) for s in range(3)]  # 12 positions = 2 epochs of 6
    flat = [p for b in first for p in b]
    assert sorted(i for i, e in flat if e == 0) == list(range(6)) and sorted(i for i, e in flat if e == 1) == list(
        range(6)
    )
    assert first == [batch_positions(cfg, 6, s) for s in range(3)]
    assert first != [batch_positions(_cfg(batch_size=4, seed=1), 6, s) for s in range(3)]


def test_product_loss_equals_explicit_delta_w(tiny_qwen2):
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    w1 = LoraWeights.random(layout, num_adapters=2, std=0.1, seed=1)
    w2 = LoraWeights.random(layout, num_adapters=2, std=0.1, seed=2)
    s = layout.scale
    explicit = sum(((s * (w1.B[k] @ w1.A[k] - w2.B[k] @ w2.A[k])) ** 2).sum(dim=(-2, -1)) for k in w1.A)
    assert torch.allclose(product_sq_norm(w1, w2), explicit, rtol=1e-5)
    assert torch.allclose(
        product_sq_norm(w1), sum(((s * w1.B[k] @ w1.A[k]) ** 2).sum(dim=(-2, -1)) for k in w1.A), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["tokens", "slots", "product"])
def test_weight_loss_floor_is_the_per_task_mean_teachers_loss(tiny_qwen2, kind):
    """The floor of L_weights: every teacher predicted by its task's mean (in the loss's own space). Zero when a
    task's teachers agree; below the loss of any single prediction per task; for slots and product equal to the
    loss of the explicit per-task mean."""
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    centres = LoraWeights.random(layout, num_adapters=2, std=0.1, seed=3)
    noise = LoraWeights.random(layout, num_adapters=6, std=0.02, seed=4)
    rows = [0, 0, 0, 1, 1, 1]
    groups = ["a", "a", "a", "b", "b", "b"]

    def around(scale: float) -> LoraWeights:
        return LoraWeights(
            layout,
            {k: centres.A[k][rows] + scale * noise.A[k] for k in centres.A},
            {k: centres.B[k][rows] + scale * noise.B[k] for k in centres.B},
        )

    same = around(0.0)
    assert WeightLoss(kind, same).floor(same, groups) == pytest.approx(0.0, abs=1e-6)
    teachers = around(1.0)
    loss = WeightLoss(kind, teachers)
    floor = loss.floor(teachers, groups)
    assert (
        0
        < floor
        < float(
            loss(
                LoraWeights(
                    layout, {k: centres.A[k][rows] for k in centres.A}, {k: centres.B[k][rows] for k in centres.B}
                ),
                teachers,
            )
        )
        + 1e-9
    )
    assert floor < float(loss(LoraWeights.zeros(layout, num_adapters=6), teachers))
    if kind == "product":  # the mean ΔW per task, formed explicitly
        s = layout.scale
        explicit = 0.0
        for ids in ([0, 1, 2], [3, 4, 5]):
            for k in teachers.A:
                dw = s * teachers.B[k][ids] @ teachers.A[k][ids]
                explicit += float(((dw - dw.mean(0)) ** 2).sum())
        assert floor == pytest.approx(explicit / 6 / loss.scale, rel=1e-4)
    if kind == "slots":
        mean = {
            m: {
                k: torch.stack([getattr(teachers, m)[k][ids].mean(0) for ids in ([0, 1, 2],) * 3 + ([3, 4, 5],) * 3])
                for k in teachers.A
            }
            for m in ("A", "B")
        }
        assert floor == pytest.approx(float(loss(LoraWeights(layout, mean["A"], mean["B"]), teachers)), rel=1e-5)
    with pytest.raises(ValueError, match="5 groups for 6 teachers"):
        loss.floor(teachers, groups[:5])


@pytest.mark.parametrize(
    "name,options", [("compact", {"trunk_width": 32, "head_hidden": 16, "basis_dim": 4}), ("hyperconv", {})]
)
def test_gradient_sanity_every_generator_parameter(tiny_qwen2, name, options):
    """Perturbing the generator output changes Δ_pred; L_Δ.backward() reaches every generator parameter."""
    torch.manual_seed(0)
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    gen = build_generator(name, layout, cond_dim=16, n_prompts=N_PROMPTS, **options)
    with torch.no_grad():  # leave the zero-initialised output layers (ΔW = 0 at init: no gradient to A yet)
        for p in gen.parameters():
            p.add_(0.05 * torch.randn_like(p))
    probe = DeltaProbe(tiny_qwen2, "generic5", "last_token")
    cond = torch.randn(2, N_PROMPTS, 16)
    pred = gen(cond)
    d = probe(pred)
    assert d.shape == (2, tiny_qwen2.config.hidden_size) and d.dtype == torch.float32
    bumped = LoraWeights(
        layout, {k: v.detach() for k, v in pred.A.items()}, {k: v.detach() + 0.05 for k, v in pred.B.items()}
    )
    assert not torch.allclose(probe(bumped), d.detach(), atol=1e-6)
    target = torch.randn_like(d)
    delta_loss(d, target, "mse", scale=float(target.square().sum(-1).mean())).backward()
    dead = [n for n, p in gen.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"no gradient in {dead}"
    assert all(p.grad is None for p in tiny_qwen2.model.parameters())


@pytest.mark.parametrize("rep", ["last_token", "mean", "layers:[1,-1]:concat"])
def test_probe_delta_equals_the_cached_teacher_delta(tiny_qwen2, tmp_path, rep):
    """L_Δ compares the differentiable Δ with Δ the extractor cached: both must compute the same thing."""
    from deltalora.deltas import DeltaExtractor

    w = LoraWeights.random(derive_layout(tiny_qwen2.arch, SPEC), num_adapters=3, std=0.1, seed=4)
    ours = DeltaProbe(tiny_qwen2, "neutral24", rep)(w)
    ref = DeltaExtractor(tiny_qwen2, "neutral24", rep, cache=tmp_path).lora_deltas(w)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)
    bf16 = DeltaProbe(tiny_qwen2, "neutral24", rep, dtype="bfloat16")(w)
    assert bf16.dtype == torch.float32 and float(torch.nn.functional.cosine_similarity(bf16, ref, dim=-1).min()) > 0.9


def test_probe_dtype_wider_than_the_backbone_is_refused():
    from deltalora.backbones import load_backbone
    from deltalora.config import RuntimeConfig
    from deltalora.errors import ConfigError

    bf16 = load_backbone("tiny-qwen2", RuntimeConfig(device="cpu", dtype="bfloat16"))
    with pytest.raises(ConfigError, match="autocast cannot widen"):
        DeltaProbe(bf16, "generic5", "last_token", dtype="float32")
    assert DeltaProbe(bf16, "generic5", "last_token", dtype="bfloat16").base.dtype == torch.float32


def test_zero_adapter_gives_zero_delta_and_cosine_loss(tiny_qwen2):
    probe = DeltaProbe(tiny_qwen2, "generic5", "last_token")
    zero = LoraWeights.zeros(derive_layout(tiny_qwen2.arch, SPEC), num_adapters=2)
    assert probe(zero).abs().max() < 1e-5
    x = torch.randn(3, 8)
    assert delta_loss(x, 2 * x, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert delta_loss(x, -x, "cosine").item() == pytest.approx(2.0, abs=1e-6)


def test_specific_cosine_ignores_the_shared_shift():
    c = torch.tensor([10.0, 0.0, 0.0, 0.0])  # the direction every teacher shares
    target = c + torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    shared_only = c.expand(2, 4) + 1e-3 * torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
    # the raw cosine calls "only the shared shift" a near-perfect match; the task-specific one sees the opposite sign
    assert delta_loss(shared_only, target, "cosine").item() < 0.01
    assert delta_loss(shared_only, target, "specific_cosine", shared=c).item() == pytest.approx(2.0, abs=1e-4)
    # any amount of the shared shift, the same task-specific direction: a perfect match
    assert delta_loss(0.1 * c + 3 * (target - c), target, "specific_cosine", shared=c).item() == pytest.approx(
        0.0, abs=1e-6
    )
    # a zero shift carries nothing task-specific: cosine 0, never a match (a subtraction would have scored it)
    assert delta_loss(torch.zeros(2, 4), target, "specific_cosine", shared=c).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(remove_shared(target, c), target - c)
    with pytest.raises(ValueError, match="shared"):
        delta_loss(target, target, "specific_cosine")
    with pytest.raises(ValueError, match="specific_cosine"):
        delta_loss(target, target, "huber")


def _full_set(ds):
    from deltalora.training.data import collate_teachers

    return collate_teachers([ds.example(i, 0) for i in range(len(ds))])


WIDE = {"trunk_width": 64, "head_hidden": 32, "basis_dim": 16}


def test_weight_only_training_lowers_the_weight_loss(world, tiny_qwen2, tmp_path):
    ds = _train_set(world)
    cfg = _cfg(steps=40, batch_size=5, delta_batch=1, generator_options=WIDE, lam=LambdaSchedule())
    res = train_generator(cfg, ds, tiny_qwen2, tmp_path / "w", progress=False)
    batch = _full_set(ds)
    wl = WeightLoss("product", batch.weights)
    torch.manual_seed(cfg.seed)
    init = build_generator("compact", ds.layout, cond_dim=ds.cond_dim, n_prompts=N_PROMPTS, **WIDE)
    with torch.no_grad():
        before, after = (
            float(wl(init(batch.conditions), batch.weights)),
            float(wl(res.module(batch.conditions), batch.weights)),
        )
    assert before == pytest.approx(1.0, abs=1e-4)  # B = 0 at init: as far as predicting zero
    assert after < before - 0.01
    recs = [json.loads(x) for x in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_delta"] is None and r["lambda"] == 0 for r in recs)  # λ = 0: the backbone is never run
    fit = json.loads((tmp_path / "w" / "fit.json").read_text())
    groups = ["+".join(ds.example(i, 0).components) for i in range(len(ds))]
    assert fit == {"weight_loss": "product", "weight_loss_floor": res.weight_loss_floor, "teachers": len(ds)}
    assert res.weight_loss_floor == pytest.approx(wl.floor(batch.weights, groups), rel=1e-5)
    assert 0 < res.weight_loss_floor < 1  # seeds of one task agree more than with zero


def test_delta_training_logs_and_matches_teacher_deltas(world, tiny_qwen2, tmp_path):
    ds = _train_set(world)
    res = train_generator(_cfg(steps=30, generator_options=WIDE), ds, tiny_qwen2, tmp_path / "run", progress=False)
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(30))
    assert recs[0]["loss_delta"] is None and recs[0]["lambda"] == 0  # λ warm-up: no Δ forward
    assert recs[1]["lambda"] == 0.5 and recs[2]["lambda"] == 1.0
    assert all(
        r["loss_delta"] is not None and -1 <= r["delta_cosine"] <= 1 and r["delta_norm_teacher"] > 0 for r in recs[1:]
    )
    batch = _full_set(ds)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(
            DeltaProbe(tiny_qwen2)(res.module(batch.conditions)), batch.deltas, dim=-1
        )
    assert float(cos.mean()) > 0.2  # from 0 at init (B = 0: Δ = 0)
    assert res.steps == 30 and res.generator.exists()
    loaded = load_generator(res.generator)
    assert loaded.encoder == "tiny-encoder" and loaded.n_prompts == N_PROMPTS
    # finished: a rerun does nothing and returns the same generator
    before = res.generator.read_bytes()
    again = train_generator(_cfg(steps=30, generator_options=WIDE), ds, tiny_qwen2, tmp_path / "run", progress=False)
    assert again.resumed_from == 30 and again.generator.read_bytes() == before


def test_hyperconv_trains_on_dnd_tokens_with_the_delta_loss(world, tiny_qwen2, tmp_path):
    cfg = _cfg(generator="hyperconv", generator_options={}, weight_loss="tokens", steps=4)
    res = train_generator(cfg, _train_set(world), tiny_qwen2, tmp_path / "hc", progress=False)
    recs = [json.loads(x) for x in (tmp_path / "hc" / "log.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["loss_weights"] > 0 for r in recs) and recs[-1]["loss_delta"] is not None
    assert load_generator(res.generator).name == "hyperconv"


def test_resume_equals_uninterrupted_run(world, tiny_qwen2, tmp_path):
    ds = _train_set(world)
    full = train_generator(_cfg(), ds, tiny_qwen2, tmp_path / "full", progress=False)
    for _ in range(3):  # interrupted after 1, then 3 (state saved at 1, at the save_every=2 boundary, ...)
        part = train_generator(
            _cfg(), ds, tiny_qwen2, tmp_path / "parts", progress=False, stop_after=1 if _ == 0 else 3
        )
    assert part.steps == 6
    assert (tmp_path / "parts" / "generator.safetensors").read_bytes() == full.generator.read_bytes()
    a = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    b = (tmp_path / "parts" / "log.jsonl").read_text().splitlines()

    def strip(lines):
        return [{k: v for k, v in json.loads(x).items() if k not in ("step_seconds", "grad_norm")} for x in lines]

    assert strip(a) == strip(b)


def test_tensorboard_scalars_when_installed(world, tiny_qwen2, tmp_path, monkeypatch):
    """With TensorBoard installed the loop mirrors every float of a log record as a scalar (a stand-in writer here)."""
    written = []

    class Writer:
        def add_scalar(self, tag, value, step):
            written.append((tag, step))

        def close(self):
            written.append(("closed", -1))

    monkeypatch.setattr("deltalora.training.loop._tensorboard", lambda out: Writer())
    train_generator(_cfg(steps=3), _train_set(world), tiny_qwen2, tmp_path / "tb", progress=False)
    tags = {t for t, _ in written}
    assert {"loss_weights", "lr", "lambda", "loss_delta", "delta_cosine"} <= tags and ("closed", -1) in written
    assert {s for t, s in written if t == "loss_weights"} == {0, 1, 2}


def test_resume_refuses_another_config(world, tiny_qwen2, tmp_path):
    ds = _train_set(world)
    train_generator(_cfg(), ds, tiny_qwen2, tmp_path / "r", progress=False, stop_after=2)
    with pytest.raises(TrainStateError, match="another config"):
        train_generator(_cfg(lr=1e-2), ds, tiny_qwen2, tmp_path / "r", progress=False)


def test_weight_only_state_ignores_delta_only_settings(world, tiny_qwen2, tmp_path):
    """At λ = 0 the Δ loss, probes and representation are never read: a weight-only run resumes (or is reused)
    under a Δ variant of its config, while a Δ-augmented run with another Δ loss is refused."""
    ds = _train_set(world)
    wo = dict(lam=LambdaSchedule(), steps=4)
    first = train_generator(_cfg(**wo), ds, tiny_qwen2, tmp_path / "wo", progress=False, stop_after=2)
    assert first.steps == 2
    done = train_generator(
        _cfg(**wo, delta_loss="specific_cosine", delta_batch=1, probes="neutral24"),
        ds,
        tiny_qwen2,
        tmp_path / "wo",
        progress=False,
    )
    assert done.steps == 4
    ref = train_generator(_cfg(**wo), ds, tiny_qwen2, tmp_path / "ref", progress=False)
    from safetensors.torch import load_file

    a, b = load_file(done.generator), load_file(ref.generator)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same run, whatever the Δ settings say
    from deltalora.generators.checkpoint import read_checkpoint_metadata

    # ... and it records the same (effective) config, naming the settings it did not read
    recorded = read_checkpoint_metadata(done.generator)["extra"]["train_config"]
    assert recorded == read_checkpoint_metadata(ref.generator)["extra"]["train_config"]
    assert recorded["delta_loss"] == "mse" and recorded["probes"] == "generic5"
    assert recorded["unused_at_lambda_0"] == ["delta_batch", "delta_loss", "probes", "representation", "probe_dtype"]
    assert json.loads((tmp_path / "wo" / "train_config.json").read_text()) == recorded
    train_generator(_cfg(steps=4), ds, tiny_qwen2, tmp_path / "d", progress=False, stop_after=2)
    with pytest.raises(TrainStateError, match="another config"):
        train_generator(_cfg(steps=4, delta_loss="cosine"), ds, tiny_qwen2, tmp_path / "d", progress=False)


def test_states_written_before_the_weight_only_fingerprint_change_still_resume(world, tiny_qwen2, tmp_path):
    from deltalora.training.loop import fingerprint
    from deltalora.training.state import read_state

    ds = _train_set(world)
    cfg = _cfg(lam=LambdaSchedule(), steps=4)
    train_generator(cfg, ds, tiny_qwen2, tmp_path / "old", progress=False, stop_after=2)
    header, _ = read_state(tmp_path / "old" / "trainer_state.safetensors")
    assert header["fingerprint"] == fingerprint(cfg, ds, 1) != fingerprint(cfg, ds, 1, legacy=True)
    # rewrite the state as an earlier version did (the full-config fingerprint), then resume
    from safetensors.torch import save

    header["fingerprint"] = fingerprint(cfg, ds, 1, legacy=True)
    state = tmp_path / "old" / "trainer_state.safetensors"
    state.write_bytes(save(read_state(state)[1], metadata={"header": json.dumps(header)}))
    assert train_generator(cfg, ds, tiny_qwen2, tmp_path / "old", progress=False).steps == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, root: str, port: int) -> None:
    from pathlib import Path

    import torch.distributed as dist
    from safetensors.torch import save_file

    from deltalora.backbones import load_backbone

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        backbone = load_backbone("tiny-qwen2")
        wd = teacher_world(Path(root) / f"world{rank}", backbone)  # each rank builds the same tiny zoo
        ds = TeacherDataset(
            wd["zoo"], wd["conditioner"], wd["spec"], cache=wd["cache"], arch=wd["arch"], split="train", heldout=["c"]
        )
        res = train_generator(_cfg(steps=3, batch_size=4), ds, backbone, Path(root) / "run", progress=False)
        save_file(
            {k: v.detach().contiguous() for k, v in res.module.state_dict().items()},
            str(Path(root) / f"rank{rank}.safetensors"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_hold_identical_generators(world, tiny_qwen2, tmp_path):
    from safetensors.torch import load_file

    mp.spawn(_ddp_worker, args=(2, str(tmp_path), _free_port()), nprocs=2, join=True)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2]  # rank 0 alone writes the log
    # the same global batch on one process gives the same update (gradients averaged over ranks)
    single = train_generator(
        _cfg(steps=3, batch_size=4), _train_set(world), tiny_qwen2, tmp_path / "single", progress=False
    )
    sd = single.module.state_dict()
    assert any(
        not torch.equal(
            r0[k],
            build_generator(
                "compact", single.module.layout, cond_dim=16, n_prompts=N_PROMPTS, **_cfg().generator_options
            ).state_dict()[k],
        )
        for k in r0
    )
    assert all(torch.allclose(r0[k], sd[k], atol=1e-5, rtol=1e-4) for k in r0)
