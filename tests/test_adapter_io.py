"""PEFT adapter directories: round trips, stock-PEFT compatibility both ways, validation at the boundary, inspect,
CLI."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.config import LoraSpec
from deltalora.errors import AdapterError
from deltalora.lora import LoraWeights, derive_layout
from deltalora.lora.adapter_io import (
    CONFIG_NAME,
    PICKLE_NAME,
    WEIGHTS_NAME,
    inspect_adapter,
    load_adapter,
    save_adapter,
)

ALL7 = "q,k,v,o,gate,up,down"
SPECS = {
    "r8-qv": LoraSpec(rank=8, alpha=16, targets="q,v"),
    "r4-all7": LoraSpec(rank=4, alpha=32, targets=ALL7),
    "r4-all7-layer1": LoraSpec(rank=4, alpha=8, targets=ALL7, layers=[1]),
    "r16-qv-rslora": LoraSpec(rank=16, alpha=32, targets="q,v", rslora=True),
    "r2-kod-layer0-alpha3.5": LoraSpec(rank=2, alpha=3.5, targets="k,o,down", layers=[0]),
}


def saved(backbone, tmp_path, spec=SPECS["r8-qv"], seed=0, name="adapter") -> tuple[LoraWeights, Path]:
    weights = LoraWeights.random(derive_layout(backbone.arch, spec), std=0.05, seed=seed)
    return weights, save_adapter(weights, tmp_path / name, base_model_name_or_path=backbone.name)


def assert_same(got: LoraWeights, want: LoraWeights) -> None:
    assert [s.key for s in got.layout.slots] == [s.key for s in want.layout.slots]
    for key in want.A:
        assert got.A[key].dtype == want.A[key].dtype
        assert torch.equal(got.A[key], want.A[key]) and torch.equal(got.B[key], want.B[key]), key


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["tiny_qwen2", "tiny_llama"])
@pytest.mark.parametrize("spec_id", list(SPECS))
def test_round_trip_bit_exact(name, spec_id, request, tmp_path):
    b = request.getfixturevalue(name)
    weights, out = saved(b, tmp_path, SPECS[spec_id], seed=3)
    with_arch = load_adapter(out, b.arch)
    assert with_arch.layout == weights.layout
    assert_same(with_arch, weights)
    inferred = load_adapter(out)  # no backbone: slots and shapes inferred from the file
    assert inferred.layout.arch is None and inferred.layout.spec == weights.layout.spec
    assert [s.to_dict() for s in inferred.layout.slots] == [s.to_dict() for s in weights.layout.slots]
    assert_same(inferred, weights)


def test_save_writes_peft_config_and_metadata(tiny_qwen2, tmp_path):
    weights = LoraWeights.random(derive_layout(tiny_qwen2.arch, SPECS["r4-all7-layer1"]), seed=1)
    out = save_adapter(weights, tmp_path / "a", base_model_name_or_path="tiny-qwen2", metadata={"run": "r1"})
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert sorted(cfg["target_modules"]) == sorted(weights.layout.spec.targets)
    assert cfg["layers_to_transform"] == [1] and cfg["base_model_name_or_path"] == "tiny-qwen2"
    with safe_open(out / WEIGHTS_NAME, framework="pt") as fh:
        assert fh.metadata() == {"format": "pt", "run": "r1"}
        assert sorted(fh.keys()) == sorted(weights.layout.by_peft_key())
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_save_keeps_dtype_and_loads_as_asked(tiny_llama, tmp_path):
    weights = LoraWeights.random(derive_layout(tiny_llama.arch, SPECS["r8-qv"]), seed=2, dtype=torch.bfloat16)
    out = save_adapter(weights, tmp_path / "bf16")
    assert_same(load_adapter(out, dtype=None), weights)
    assert_same(load_adapter(out), weights.to(torch.float32))
    assert inspect_adapter(out)["dtype"] == "bfloat16"


def test_save_refuses_batches_and_is_atomic(tiny_qwen2, tmp_path, monkeypatch):
    layout = derive_layout(tiny_qwen2.arch, SPECS["r8-qv"])
    batch = LoraWeights.random(layout, num_adapters=2, seed=0)
    with pytest.raises(ValueError, match="single adapter"):
        save_adapter(batch, tmp_path / "b")
    out = save_adapter(batch.select(1), tmp_path / "b")  # views into a batch save fine
    assert_same(load_adapter(out), batch.select(1))
    before = (out / WEIGHTS_NAME).read_bytes()

    import deltalora.lora.adapter_io as io

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "safetensors_bytes", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_adapter(batch.select(0), out)
    with pytest.raises(RuntimeError, match="disk full"):
        save_adapter(batch.select(0), tmp_path / "never")
    assert (out / WEIGHTS_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no half-written or scratch dirs


# ----------------------------------------------------------------------------------------- stock PEFT


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


@pytest.mark.parametrize("name,spec_id", [("tiny_qwen2", "r4-all7-layer1"), ("tiny_llama", "r16-qv-rslora")])
def test_stock_peft_loads_saved_adapter(name, spec_id, request, tmp_path):
    b = request.getfixturevalue(name)
    weights, out = saved(b, tmp_path, SPECS[spec_id], seed=5)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(b.model), str(out)).eval()
    state = lora_state(peft_model)
    assert len(state) == 2 * len(weights.layout.slots)
    for s in weights.layout.slots:
        assert torch.equal(state[f"base_model.model.{s.path}.lora_A.default.weight"], weights.A[s.key])
        assert torch.equal(state[f"base_model.model.{s.path}.lora_B.default.weight"], weights.B[s.key])
    assert peft_model.peft_config["default"].use_rslora == weights.layout.spec.rslora
    ids = b.tokenizer(["LoRA in, LoRA out"], return_tensors="pt")
    with torch.no_grad():
        base = b.model(**ids).logits
        adapted = peft_model(**ids).logits
    assert (adapted - base).abs().max() > 1e-3


@pytest.mark.parametrize(
    "config",
    [
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        dict(
            r=8,
            lora_alpha=16,
            target_modules=["k_proj", "up_proj"],
            layers_to_transform=1,
            layers_pattern="layers",
            use_rslora=True,
        ),
        dict(
            r=4,
            lora_alpha=4,
            target_modules=["self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"],
        ),
        dict(r=2, lora_alpha=4, target_modules=r"model\.layers\.\d+\.(self_attn\.o_proj|mlp\.gate_proj)"),
        dict(r=2, lora_alpha=4, target_modules="all-linear", exclude_modules=["o_proj"]),
    ],
    ids=["list", "layers-int-rslora", "full-names", "regex", "all-linear-exclude"],
)
@pytest.mark.parametrize("name", ["tiny_qwen2", "tiny_llama"])
def test_load_adapter_written_by_peft(name, config, request, tmp_path):
    b = request.getfixturevalue(name)
    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(b.model), LoraConfig(lora_dropout=0.0, task_type="CAUSAL_LM", **config))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    state = lora_state(peft_model)
    for arch in (b.arch, None):
        weights = load_adapter(tmp_path / "peft", arch)
        assert len(weights.layout.slots) * 2 == len(state)
        for s in weights.layout.slots:
            assert torch.equal(weights.A[s.key], state[f"base_model.model.{s.path}.lora_A.default.weight"])
            assert torch.equal(weights.B[s.key], state[f"base_model.model.{s.path}.lora_B.default.weight"])
        lora_layer = next(m for m in peft_model.modules() if isinstance(getattr(m, "scaling", None), dict))
        assert weights.layout.scale == pytest.approx(lora_layer.scaling["default"])
    info = inspect_adapter(tmp_path / "peft", b.arch)
    assert info["valid"] and info["num_params"] == sum(t.numel() for t in state.values())


# ----------------------------------------------------------------------------------------- validation


def edit_config(out: Path, **changes) -> Path:
    cfg = json.loads((out / CONFIG_NAME).read_text())
    cfg.update(changes)
    (out / CONFIG_NAME).write_text(json.dumps(cfg))
    return out / CONFIG_NAME


def edit_tensors(out: Path, fn) -> Path:
    tensors = load_file(out / WEIGHTS_NAME)
    fn(tensors)
    save_file(tensors, out / WEIGHTS_NAME, metadata={"format": "pt"})
    return out / WEIGHTS_NAME


def _first(tensors, ab="A"):
    return next(k for k in sorted(tensors) if f"lora_{ab}" in k)


def _rename_with_adapter_name(t):
    for k in list(t):
        t[k.replace(".weight", ".default.weight")] = t.pop(k)


def _poison(t, key_part, value):
    k = next(k for k in sorted(t) if key_part in k)
    t[k][0, 0] = value


def _pickle_only(out):
    (out / WEIGHTS_NAME).rename(out / PICKLE_NAME)
    return out / PICKLE_NAME


def _truncate(out):
    f = out / WEIGHTS_NAME
    f.write_bytes(f.read_bytes()[:-100])
    return f


def _garbage(out):
    f = out / WEIGHTS_NAME
    f.write_bytes(b"\x93NUMPY this is not a safetensors file at all" * 10)
    return f


def _config_text(text):
    def go(out):
        (out / CONFIG_NAME).write_text(text)
        return out / CONFIG_NAME

    return go


def _remove(name):
    def go(out):
        (out / name).unlink()
        return out / name

    return go


def _weights_after(config_file: Path) -> Path:
    """The config was edited, but the mismatch is reported against the weights file."""
    return config_file.parent / WEIGHTS_NAME


def _remove_dir(out):
    shutil.rmtree(out)
    return out


# (id, corrupt(out) -> the file the message must name, substring of the problem); the adapter is r8 q,v on tiny-qwen2
ERROR_CASES = [
    ("dir-missing", _remove_dir, "adapter directory not found"),
    ("config-missing", _remove(CONFIG_NAME), "adapter_config.json not found"),
    ("config-not-json", _config_text("{'r': 8,"), "not valid JSON"),
    ("config-not-object", _config_text("[1, 2]"), "not a JSON object"),
    ("not-lora", lambda out: edit_config(out, peft_type="IA3"), "peft_type is 'IA3'"),
    ("dora", lambda out: edit_config(out, use_dora=True), "use_dora is True"),
    ("rank-pattern", lambda out: edit_config(out, rank_pattern={"q_proj": 4}), "rank_pattern"),
    ("alpha-pattern", lambda out: edit_config(out, alpha_pattern={"v_proj": 4}), "alpha_pattern"),
    ("bias", lambda out: edit_config(out, bias="all"), "bias is 'all'"),
    ("modules-to-save", lambda out: edit_config(out, modules_to_save=["lm_head"]), "modules_to_save"),
    ("bad-r", lambda out: edit_config(out, r=0), "invalid r"),
    ("weights-missing", _remove(WEIGHTS_NAME), "adapter_model.safetensors not found"),
    ("pickle-only", _pickle_only, "never unpickles"),
    ("truncated", _truncate, "not a readable safetensors file"),
    ("garbage", _garbage, "not a readable safetensors file"),
    ("empty-file", lambda out: edit_tensors(out, dict.clear), "holds no tensors"),
    ("adapter-name", lambda out: edit_tensors(out, _rename_with_adapter_name), "adapter name 'default'"),
    (
        "foreign-key",
        lambda out: edit_tensors(
            out, lambda t: t.update({"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64)})
        ),
        "match no LoRA slot (base_model.model.lm_head.lora_A.weight)",
    ),
    ("missing-key", lambda out: edit_tensors(out, lambda t: t.pop(_first(t, "B"))), "1 LoRA tensor(s) missing"),
    (
        "unselected-key",
        lambda out: _weights_after(edit_config(out, target_modules=["q_proj"])),
        "not selected by adapter_config.json",
    ),
    ("rank-mismatch", lambda out: _weights_after(edit_config(out, r=4)), "do not have rank r=4"),
    (
        "target-not-on-backbone",
        lambda out: edit_config(out, target_modules=["q_proj", "v_proj", "c_attn"]),
        "'c_attn' matches no",
    ),
    (
        "layers-not-on-backbone",
        lambda out: edit_config(out, layers_to_transform=[0, 1, 5]),
        "layers_to_transform [5] do not exist",
    ),
    ("bad-regex", lambda out: edit_config(out, target_modules="(q_proj"), "not a valid regex"),
    (
        "non-rectangular",
        lambda out: edit_config(
            out, target_modules=r"model\.layers\.0\.self_attn\.q_proj|model\.layers\.1\.self_attn\.v_proj"
        ),
        "different modules in different layers",
    ),
    (
        "nan",
        lambda out: edit_tensors(out, lambda t: _poison(t, "layers.1.self_attn.v_proj.lora_B", float("nan"))),
        "1.v_proj (B)",
    ),
    (
        "inf",
        lambda out: edit_tensors(out, lambda t: _poison(t, "layers.0.self_attn.q_proj.lora_A", float("inf"))),
        "0.q_proj (A)",
    ),
    (
        "int-dtype",
        lambda out: edit_tensors(out, lambda t: t.update({(k := _first(t)): t[k].to(torch.int32)})),
        "non-floating-point",
    ),
]


@pytest.mark.parametrize("case_id,corrupt,needle", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_invalid_adapters_raise_one_line(case_id, corrupt, needle, tiny_qwen2, tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    _, out = saved(tiny_qwen2, tmp_path)
    named = corrupt(out)
    with pytest.raises(AdapterError) as info:
        load_adapter(out, tiny_qwen2.arch)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert needle in err.problem, message
    assert err.path == str(named) and message.startswith(str(named))
    assert len(err.fix) > 10
    report = inspect_adapter(out, tiny_qwen2.arch)
    assert report["valid"] is False and message in report["problems"]
    assert all("\n" not in p for p in report["problems"])


def test_pickle_is_never_unpickled_even_without_arch(tiny_qwen2, tmp_path, monkeypatch):
    _, out = saved(tiny_qwen2, tmp_path)
    (out / WEIGHTS_NAME).unlink()
    torch.save(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)}, out / PICKLE_NAME
    )
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(AdapterError, match="save_file"):
        load_adapter(out)
    assert calls == []


def test_errors_without_arch(tiny_qwen2, tmp_path):
    _, out = saved(tiny_qwen2, tmp_path, SPECS["r4-all7"])
    edit_config(out, target_modules=["q_proj", "lm_head"])
    with pytest.raises(AdapterError, match="'lm_head' matches no q/k/v/o/gate/up/down projection"):
        load_adapter(out)
    edit_config(out, target_modules=["q_proj", "gate_proj"], layers_to_transform=[0, 1, 2])
    problems = inspect_adapter(out)["problems"]
    assert any("not selected by adapter_config.json" in p for p in problems)
    assert any("missing (base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight" in p for p in problems)


def test_shapes_inconsistent_across_layers_without_arch(tiny_qwen2, tmp_path):
    _, out = saved(tiny_qwen2, tmp_path)
    edit_tensors(out, lambda t: t.update({k: torch.zeros(8, 32) for k in t if "layers.1.self_attn.q_proj.lora_A" in k}))
    with pytest.raises(AdapterError, match="q_proj has different shapes in different layers"):
        load_adapter(out)


def test_arch_mismatch(tiny_qwen2, tiny_llama, tmp_path):
    _, out = saved(tiny_qwen2, tmp_path, SPECS["r4-all7"])
    with pytest.raises(AdapterError) as info:
        load_adapter(out, tiny_llama.arch)
    message = str(info.value)
    assert "gate_proj B[128, 4] (backbone needs [96, 4])" in message and "different backbone" in message
    # one more layer than the backbone has
    _, out3 = saved(tiny_qwen2, tmp_path, SPECS["r8-qv"], name="three")
    edit_tensors(
        out3,
        lambda t: t.update(
            {k.replace("layers.1.", "layers.2."): v.clone() for k, v in list(t.items()) if "layers.1." in k}
        ),
    )
    with pytest.raises(
        AdapterError, match=r"not selected by adapter_config.json \(base_model.model.model.layers.2.self_attn"
    ):
        load_adapter(out3, tiny_qwen2.arch)


# ----------------------------------------------------------------------------------------- inspect


@pytest.mark.parametrize("spec_id", ["r4-all7-layer1", "r16-qv-rslora"])
def test_inspect_valid(spec_id, tiny_qwen2, tmp_path):
    weights, out = saved(tiny_qwen2, tmp_path, SPECS[spec_id], seed=7)
    layout = weights.layout
    for arch in (tiny_qwen2.arch, None):
        info = inspect_adapter(out, arch)
        assert info["valid"] is True and info["problems"] == []
        assert (info["rank"], info["alpha"], info["rslora"]) == (
            layout.spec.rank,
            layout.spec.alpha,
            layout.spec.rslora,
        )
        assert info["scale"] == pytest.approx(layout.scale)
        assert info["targets"] == list(layout.spec.targets) and info["layers"] == list(layout.layers)
        assert info["num_slots"] == len(layout.slots) and info["num_params"] == layout.num_params
        assert info["dtype"] == "float32" and info["path"] == str(out)
        assert set(info["norms"]) == set(layout.spec.targets)
        for module, norms in info["norms"].items():
            slots = [s for s in layout.slots if s.module == module]
            direct = [torch.linalg.norm(layout.scale * weights.B[s.key] @ weights.A[s.key]).item() for s in slots]
            assert norms["delta_w_fro_mean"] == pytest.approx(sum(direct) / len(direct), rel=1e-5)
            a_all = torch.cat([weights.A[s.key].flatten() for s in slots])
            assert norms["A_fro"] == pytest.approx(torch.linalg.norm(a_all).item(), rel=1e-5)
        json.dumps(info, allow_nan=False)


def test_inspect_collects_all_nan_slots(tiny_llama, tmp_path):
    _, out = saved(tiny_llama, tmp_path, SPECS["r4-all7"])

    def poison(t):
        _poison(t, "layers.0.mlp.up_proj.lora_A", float("nan"))
        _poison(t, "layers.1.self_attn.k_proj.lora_B", float("-inf"))

    edit_tensors(out, poison)
    info = inspect_adapter(out, tiny_llama.arch)
    assert info["valid"] is False and len(info["problems"]) == 1
    assert "0.up_proj (A)" in info["problems"][0] and "1.k_proj (B)" in info["problems"][0]
    assert info["rank"] == 4 and info["num_params"] == derive_layout(tiny_llama.arch, SPECS["r4-all7"]).num_params
    assert info["norms"]["up_proj"]["A_fro"] is None and info["norms"]["q_proj"]["A_fro"] > 0
    json.dumps(info, allow_nan=False)


def test_inspect_collects_several_problems(tiny_qwen2, tmp_path):
    _, out = saved(tiny_qwen2, tmp_path)
    edit_config(out, use_dora=True, bias="lora_only")
    edit_tensors(out, lambda t: (t.pop(_first(t, "A")), _poison(t, "layers.1.self_attn.v_proj.lora_B", float("nan"))))
    info = inspect_adapter(out, tiny_qwen2.arch)
    joined = " | ".join(info["problems"])
    for needle in ("use_dora", "bias is 'lora_only'", "missing", "1.v_proj (B)"):
        assert needle in joined
    assert info["rank"] == 8 and info["targets"] == ["q_proj", "v_proj"]


# ----------------------------------------------------------------------------------------- CLI


def test_cli_inspect(tiny_qwen2, tmp_path):
    weights, out = saved(tiny_qwen2, tmp_path, SPECS["r4-all7"])
    runner = CliRunner()
    res = runner.invoke(app, ["adapter", "inspect", str(out), "--backbone", "tiny-qwen2", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["valid"] and info["num_params"] == weights.layout.num_params and info["backbone"] == "tiny-qwen2"

    res = runner.invoke(app, ["adapter", "inspect", str(out)])
    assert res.exit_code == 0 and "valid" in res.stdout and f"{weights.layout.num_params:,} parameters" in res.stdout

    _truncate(out)
    res = runner.invoke(app, ["adapter", "inspect", str(out), "--backbone", "tiny-qwen2", "--json"])
    assert res.exit_code == 1
    assert "not a readable safetensors file" in json.loads(res.stdout)["problems"][0]
    res = runner.invoke(app, ["adapter", "inspect", str(out), "--backbone", "tiny-qwen2"])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"problem: {out / WEIGHTS_NAME}: not a readable safetensors file")


def test_cli_bad_backbone(tmp_path, tiny_qwen2):
    _, out = saved(tiny_qwen2, tmp_path)
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    res = CliRunner().invoke(app, ["adapter", "inspect", str(out), "--backbone", str(tmp_path / "gpt2")])
    assert res.exit_code == 2 and res.stderr.startswith("error: ")


def test_saved_bytes_are_deterministic(tiny_qwen2, tmp_path):
    """Equal content gives equal bytes (safetensors' metadata order is otherwise random per run)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from deltalora.backbones import load_backbone\n"
        "from deltalora.config import LoraSpec\n"
        "from deltalora.lora import LoraWeights, derive_layout, save_adapter\n"
        "b = load_backbone('tiny-qwen2')\n"
        "w = LoraWeights.random(derive_layout(b.arch, LoraSpec(rank=4, targets='q,v')), seed=0)\n"
        "save_adapter(w, sys.argv[1], metadata={'a': '1', 'b': '2', 'c': '3', 'd': '4'})\n"
    )
    outs = []
    for i in range(3):  # separate processes: hash-map seeds differ
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"a{i}")], check=True)
        outs.append((tmp_path / f"a{i}" / "adapter_model.safetensors").read_bytes())
    assert outs[0] == outs[1] == outs[2]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a0" / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "a": "1", "b": "2", "c": "3", "d": "4"}
