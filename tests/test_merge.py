"""Merges: each method equals PEFT's add_weighted_adapter where it says it does, on a tiny Qwen2; bad input fails."""

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.config import LoraSpec
from deltalora.lora import LoraWeights, derive_layout, load_adapter, save_adapter
from deltalora.lora.merge import MERGE_METHODS, MergeError, _magnitude_trim, _top_svd, delta_w, merge_adapters

SPEC = LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))


@pytest.fixture(scope="module")
def three(tiny_qwen2):
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    return [LoraWeights.random(layout, std=0.2, seed=s) for s in range(3)]


def peft_delta_ws(backbone, adapters, tmp_path, weights, combination, **kw) -> dict[str, torch.Tensor]:
    """PEFT's own merge of ``adapters``: slot key -> ΔW of the merged adapter."""
    dirs = []
    for i, w in enumerate(adapters):
        dirs.append(save_adapter(w, tmp_path / f"peft{i}"))
    model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(dirs[0]), adapter_name="t0")
    for i, d in enumerate(dirs[1:], start=1):
        model.load_adapter(str(d), adapter_name=f"t{i}")
    names = [f"t{i}" for i in range(len(adapters))]
    model.add_weighted_adapter(names, list(weights), "merged", combination_type=combination, **kw)
    out = {}
    for slot in adapters[0].layout.slots:
        module = model.base_model.model.get_submodule(slot.path)
        out[slot.key] = module.get_delta_weight("merged").detach().float()
    return out


def assert_same_delta(ours: LoraWeights, theirs: dict[str, torch.Tensor], atol=1e-5):
    for key, dw in theirs.items():
        mine = delta_w(ours, key)
        assert torch.allclose(mine, dw, atol=atol), (key, (mine - dw).abs().max().item())


def test_avg_is_the_exact_weighted_mean_and_equals_peft_cat(three, tiny_qwen2, tmp_path):
    merged = merge_adapters(three, [1.0, 2.0, 1.0], "avg")
    assert merged.layout.spec.rank == 3 * SPEC.rank and merged.layout.scale == 1.0
    p = [0.25, 0.5, 0.25]
    for slot in merged.layout.slots:
        mean = sum(pi * delta_w(t, slot.key) for pi, t in zip(p, three))
        assert torch.allclose(delta_w(merged, slot.key), mean, atol=1e-6)
    assert_same_delta(merged, peft_delta_ws(tiny_qwen2, three, tmp_path, p, "cat"))


@pytest.mark.parametrize(
    ("method", "peft_name", "scale_n"),
    [("svd", "svd", False), ("ties", "ties_svd", True)],
)
def test_truncated_merges_equal_peft(three, tiny_qwen2, tmp_path, method, peft_name, scale_n):
    w = [0.2, 0.5, 0.3]
    merged = merge_adapters(three, w, method, rank=4, density=0.6)
    assert merged.layout.spec.rank == 4 and merged.layout.scale == 1.0
    peft_w = [x * 3 for x in w] if scale_n else w
    kw = {"density": 0.6} if method == "ties" else {}
    theirs = peft_delta_ws(tiny_qwen2, three, tmp_path, peft_w, peft_name, svd_rank=4, **kw)
    assert_same_delta(merged, theirs)


def test_svd_from_factors_is_the_best_rank_r_approximation_of_the_mean(three):
    merged = merge_adapters(three, None, "svd", rank=2)
    for slot in merged.layout.slots:
        mean = sum(delta_w(t, slot.key) for t in three) / 3
        u, s, vh = torch.linalg.svd(mean.double(), full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        assert torch.allclose(delta_w(merged, slot.key).double(), best, atol=1e-5)
    # at full rank (3 · 4 ≥ every slot's mean rank) the truncation loses nothing
    full = merge_adapters(three, None, "svd", rank=12)
    exact = merge_adapters(three, None, "avg")
    for slot in full.layout.slots:
        assert torch.allclose(delta_w(full, slot.key), delta_w(exact, slot.key), atol=1e-5)


@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_magnitude_trim_keeps_what_peft_keeps(density):
    from peft.utils.merge_utils import magnitude_based_pruning

    x = torch.randn(37, 53, generator=torch.Generator().manual_seed(1))
    ours = _magnitude_trim(x, density)
    assert int((ours != 0).sum()) == int(density * x.numel())
    if 0 < density < 1:
        assert torch.equal(ours, magnitude_based_pruning(x, density))


def test_magnitude_trim_keeps_exactly_k_when_magnitudes_tie():
    x = torch.tensor([[1.0, -2.0, 2.0, 0.5], [-2.0, 3.0, 0.0, 2.0]])
    out = _magnitude_trim(x, 0.5)  # k = 4: the 3 and three of the four entries of magnitude 2, first by index
    assert out.tolist() == [[0.0, -2.0, 2.0, 0.0], [-2.0, 3.0, 0.0, 0.0]]


@pytest.mark.parametrize("shape", [(60, 20), (20, 60), (30, 30)])
def test_top_svd_is_the_leading_part_of_the_svd(shape):
    g = torch.Generator().manual_seed(2)
    low_rank = torch.randn(shape[0], 3, generator=g) @ torch.randn(3, shape[1], generator=g)
    for dw in (torch.randn(*shape, generator=g), low_rank):
        u, s, vh = _top_svd(dw, 5)
        assert (u.shape, s.shape, vh.shape) == ((shape[0], 5), (5,), (5, shape[1]))
        ref_u, ref_s, ref_vh = torch.linalg.svd(dw.double(), full_matrices=False)
        # within float32's resolution of the matrix (1.2e-7 of its largest singular value); the rank-3 product's
        # 4th and 5th directions are float32 rounding noise, which any two SVD routines pick differently
        tol = 1.2e-7 * float(ref_s[0])
        assert torch.allclose(s, ref_s[:5], atol=tol)
        best = (ref_u[:, :5] * ref_s[:5]) @ ref_vh[:5]
        assert torch.allclose((u * s) @ vh, best, atol=tol)
        assert torch.isfinite(u).all() and torch.isfinite(vh).all()
    u, s, vh = _top_svd(torch.zeros(shape), 4)  # ΔW = 0: zero factors, not NaN
    assert not s.any() and torch.isfinite(u).all() and torch.isfinite(vh).all() and not ((u * s) @ vh).any()


@pytest.mark.filterwarnings("ignore:The density 1.0")
def test_dare_at_density_one_is_the_plain_merge_and_is_seeded_otherwise(three):
    for dare, plain in (("dare", "svd"), ("dare_ties", "ties")):
        a = merge_adapters(three, None, dare, density=1.0)
        b = merge_adapters(three, None, plain, density=1.0)
        for key in a.A:
            assert torch.allclose(delta_w(a, key), delta_w(b, key), atol=1e-5)
    state = torch.random.get_rng_state()
    x = merge_adapters(three, None, "dare", density=0.5, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    y = merge_adapters(three, None, "dare", density=0.5, seed=1)
    z = merge_adapters(three, None, "dare", density=0.5, seed=2)
    key = three[0].layout.slots[0].key
    assert torch.equal(delta_w(x, key), delta_w(y, key)) and not torch.allclose(delta_w(x, key), delta_w(z, key))


def test_adapters_of_different_rank_and_scale_merge_exactly(tiny_qwen2, three):
    other = derive_layout(tiny_qwen2.arch, SPEC.model_copy(update={"rank": 2, "alpha": 7.0}))
    small = LoraWeights.random(other, std=0.2, seed=9)
    merged = merge_adapters([three[0], small], None, "avg")
    assert merged.layout.spec.rank == 6
    for key in merged.A:
        mean = (delta_w(three[0], key) + delta_w(small, key)) / 2
        assert torch.allclose(delta_w(merged, key), mean, atol=1e-6)


def test_merged_adapters_round_trip_through_peft_files(three, tmp_path):
    for method in MERGE_METHODS:
        merged = merge_adapters(three, None, method)
        back = load_adapter(save_adapter(merged, tmp_path / method))
        for key in merged.A:
            assert torch.allclose(delta_w(back, key), delta_w(merged, key), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [1.0, float("nan"), 1.0]}, "finite"),
        ({"weights": [1.0, 1.0]}, "2 weights for 3 adapters"),
        ({"weights": [1.0, -1.0, 1.0]}, "≥ 0"),
        ({"method": "linear"}, "unknown merge method 'linear'"),
        ({"density": 0.0, "method": "ties"}, "density"),
        ({"rank": 0, "method": "svd"}, "rank"),
    ],
)
def test_bad_merge_options_are_one_line_errors(three, kwargs, match):
    with pytest.raises(MergeError, match=match) as err:
        merge_adapters(three, **kwargs)
    assert "\n" not in str(err.value)


def test_mismatched_slots_are_refused_by_name(tiny_qwen2, three):
    other = derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, alpha=8, targets=("q_proj",)))
    with pytest.raises(MergeError, match="b does not share the slots of a"):
        merge_adapters([three[0], LoraWeights.random(other)], names=["a", "b"])
    with pytest.raises(MergeError, match="at least one adapter"):
        merge_adapters([])


def test_merge_cli_writes_a_peft_adapter_and_names_its_inputs(three, tiny_qwen2, tmp_path):
    dirs = [str(save_adapter(w, tmp_path / f"in{i}")) for i, w in enumerate(three)]
    runner = CliRunner()
    out = tmp_path / "merged"
    res = runner.invoke(app, ["merge", *dirs, "--out", str(out), "--method", "ties", "--weights", "1,1,2", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["method"] == "ties" and report["rank"] == SPEC.rank
    assert [i["weight"] for i in report["inputs"]] == [0.25, 0.25, 0.5] and report["inputs"][2]["path"] == dirs[2]
    model = PeftModel.from_pretrained(copy.deepcopy(tiny_qwen2.model), str(out))  # stock PEFT loads it
    expected = merge_adapters(three, [1, 1, 2], "ties")
    slot = three[0].layout.slots[0]
    got = model.base_model.model.get_submodule(slot.path).get_delta_weight("default").float()
    assert torch.allclose(got, delta_w(expected, slot.key), atol=1e-5)
    res = runner.invoke(app, ["merge", *dirs, "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0 and "0.3333" in res.output and "exact weighted mean" in res.output


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--weights", "1,nan,1"], "finite"),
        (["--weights", "1,x,1"], "comma-separated numbers"),
        (["--method", "linear"], "unknown merge method"),
        (["--backbone", "tiny-llama"], "different backbone"),
    ],
)
def test_merge_cli_refuses_bad_input_and_writes_nothing(three, tmp_path, extra, match):
    dirs = [str(save_adapter(w, tmp_path / f"in{i}")) for i, w in enumerate(three)]
    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["merge", *dirs, "--out", str(out), *extra])
    assert res.exit_code != 0 and match in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in0", "in1", "in2"]


def test_merge_cli_refuses_mismatched_or_broken_adapters(three, tiny_qwen2, tmp_path):
    dirs = [str(save_adapter(w, tmp_path / f"in{i}")) for i, w in enumerate(three)]
    other = derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, alpha=8, targets=("q_proj",)))
    odd = str(save_adapter(LoraWeights.random(other), tmp_path / "odd"))
    res = CliRunner().invoke(app, ["merge", dirs[0], odd, "--out", str(tmp_path / "m")])
    assert res.exit_code != 0 and "does not share the slots" in res.output
    (Path(dirs[1]) / "adapter_model.safetensors").write_bytes(b"garbage")
    res = CliRunner().invoke(app, ["merge", dirs[0], dirs[1], "--out", str(tmp_path / "m")])
    assert res.exit_code != 0 and dirs[1] in res.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["merge", dirs[0], dirs[2], "--out", str(tmp_path / "taken")])
    assert res.exit_code != 0 and "holds other files" in res.output
    assert not (tmp_path / "m").exists() and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
