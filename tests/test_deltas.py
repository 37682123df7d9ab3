"""Delta activations: probes, representations, Mode A / Mode B extraction, the content-addressed cache."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltalora.backbones import load_backbone
from deltalora.config import LoraSpec, RuntimeConfig
from deltalora.deltas import (
    DeltaCache,
    DeltaError,
    DeltaExtractor,
    ProbeError,
    ProbeSet,
    Representation,
    compute_deltas,
    delta_stats,
    encode_probes,
    get_probe_set,
    load_probe_file,
    parse_representation,
    parse_shard,
    probe_set_names,
    probe_vectors,
    robust_z,
    select_shard,
    sources_from_adapters,
    sources_from_manifest,
    sources_from_models,
)
from deltalora.deltas.extract import DeltaResult, DeltaSource
from deltalora.errors import ConfigError
from deltalora.lora import LoraWeights, derive_layout, save_adapter
from deltalora.sharding import ShardError
from deltalora.zoo import ZooEntry, append_entry, file_sha256

from .helpers import peft_reference

ALL7 = "q,k,v,o,gate,up,down"


def _layout(backbone, rank=4, targets=ALL7):
    return derive_layout(backbone.arch, LoraSpec(rank=rank, alpha=2 * rank, targets=targets))


def _adapters(backbone, root: Path, n=3, std=0.1, seed=1, rank=4, targets=ALL7) -> list[Path]:
    ws = LoraWeights.random(_layout(backbone, rank, targets), num_adapters=n, std=std, seed=seed)
    return [save_adapter(ws.select(i), root / f"a{seed}_{i}") for i in range(n)]


def _ref_activation(model, tokenizer, texts) -> torch.Tensor:
    """Delta Activations' loop: one probe per forward, full model, hidden_states[-1][:, -1], fp32 mean."""
    vs = []
    with torch.no_grad():
        for t in texts:
            enc = tokenizer(t, return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            vs.append(out.hidden_states[-1][0, -1].float())
    return torch.stack(vs).mean(0)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------ probes


def test_generic5_is_delta_activations_verbatim():
    p = get_probe_set("generic5")
    assert len(p) == 5 and p.name == "generic5"
    assert p.texts[0] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nPlease provide a response. Input:Input.\n\n### Response:"
    )
    for t in p.texts:
        assert t.endswith("### Response:") and "Please provide a response. Input:Input." in t
        assert "<|im_start|>" not in t
    assert len(set(p.texts)) == 5
    assert p.sha256 == get_probe_set("generic5").sha256


def test_larger_probe_set_and_registry():
    assert {"generic5", "neutral24"} <= set(probe_set_names())
    n = get_probe_set("neutral24")
    assert len(n) >= 20 and len(set(n.texts)) == len(n)
    assert n.sha256 != get_probe_set("generic5").sha256
    with pytest.raises(ProbeError, match="unknown probe set 'nope'"):
        get_probe_set("nope")


def test_probe_set_hash_is_of_exact_texts():
    a = ProbeSet("x", ("one", "two"))
    assert ProbeSet("y", ("one", "two")).sha256 == a.sha256  # the name is not part of the hash
    assert ProbeSet("x", ("one", "two ")).sha256 != a.sha256
    assert ProbeSet("x", ("two", "one")).sha256 != a.sha256


def test_probe_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first probe\n\nsecond probe \n", encoding="utf-8")
    assert load_probe_file(txt).texts == ("first probe", "second probe ")
    js = tmp_path / "p.jsonl"
    js.write_text('{"text": "a\\n\\n### Response:"}\n{"text": "b"}\n', encoding="utf-8")
    p = get_probe_set(str(js))
    assert p.texts == ("a\n\n### Response:", "b") and p.name == "file:p.jsonl"


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.txt", b"\n  \n", "holds no probes"),
        ("bad.jsonl", b'{"text": "ok"}\n{not json}\n', r"bad.jsonl:2: not valid JSON"),
        ("notext.jsonl", b'{"prompt": "x"}\n', r"notext.jsonl:1: needs a non-empty string field"),
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "not UTF-8 text.*re-save the file as UTF-8"),
        ("probes.csv", b"a\n", "unsupported probe file type"),
    ],
)
def test_bad_probe_files_are_one_line_errors(tmp_path, name, content, match):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ProbeError, match=match) as info:
        load_probe_file(f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)


def test_missing_probe_file(tmp_path):
    with pytest.raises(ProbeError, match="probe file not found"):
        get_probe_set(str(tmp_path / "none.txt"))


# ------------------------------------------------------------------------------------------ representations


def test_parse_representation():
    assert parse_representation("last_token") == Representation()
    assert parse_representation("mean").pool == "mean"
    r = parse_representation("layers:[1, 2]:avg")
    assert (r.layers, r.combine, r.pool) == ((1, 2), "avg", "last_token")
    assert parse_representation(r.spec) == r
    assert parse_representation("layers:[0,-1]:mean").spec == "layers:[0,-1]:concat:mean"
    for bad in ("max", "layers:[]", "layers:[1,1]", "layers:[1]:sum", "layers:1,2"):
        with pytest.raises(ConfigError, match="unknown representation"):
            parse_representation(bad)


PROBES = ("Hi", "A somewhat longer probe, to force padding.", "Mid length one\n\n### Response:")


@pytest.mark.parametrize(
    "spec", ["last_token", "mean", "layers:[0,1,2]", "layers:[1,2]:avg", "layers:[1,-1]:concat:mean"]
)
def test_batched_padded_equals_one_probe_per_forward(tiny_qwen2, spec):
    rep = parse_representation(spec)
    dec = tiny_qwen2.model.model
    with torch.no_grad():
        batched = probe_vectors(dec, encode_probes(tiny_qwen2.tokenizer, PROBES), rep)
        single = torch.cat([probe_vectors(dec, encode_probes(tiny_qwen2.tokenizer, [t]), rep) for t in PROBES])
    assert batched.dtype == torch.float32 and batched.shape == (3, rep.dim(64))
    for b, s in zip(batched, single):
        assert _rel(b, s) <= 1e-5


def test_representations_match_transformers_outputs(tiny_qwen2):
    tok, model = tiny_qwen2.tokenizer, tiny_qwen2.model
    enc = tok(PROBES[1], return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
        e = encode_probes(tok, [PROBES[1]])
        last = probe_vectors(model.model, e, parse_representation("last_token"))[0]
        mean = probe_vectors(model.model, e, parse_representation("mean"))[0]
        layers = probe_vectors(model.model, e, parse_representation("layers:[1,2]"))[0]
        avg = probe_vectors(model.model, e, parse_representation("layers:[1,2]:avg"))[0]
    torch.testing.assert_close(last, hs[-1][0, -1], rtol=0, atol=0)
    torch.testing.assert_close(mean, hs[-1][0].mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layers, torch.cat([hs[1][0, -1], hs[2][0, -1]]), rtol=0, atol=0)
    torch.testing.assert_close(avg, (hs[1][0, -1] + hs[2][0, -1]) / 2, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="layers \\[7\\] do not exist"):
        probe_vectors(model.model, e, parse_representation("layers:[7]"))


# ------------------------------------------------------------------------------------------ Mode A


def test_mode_a_matches_delta_activations_reference_loop(tiny_qwen2, tmp_path):
    dirs = _adapters(tiny_qwen2, tmp_path, n=3)
    report = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=tmp_path / "cache", batch_adapters=2)
    assert report.counts() == {"computed": 3, "cached": 0, "broken": 0}
    ids, deltas = report.load()
    assert ids == [os.path.normpath(str(d)) for d in dirs]
    probes = get_probe_set("generic5").texts
    base = _ref_activation(tiny_qwen2.model, tiny_qwen2.tokenizer, probes)
    ws = LoraWeights.random(_layout(tiny_qwen2), num_adapters=3, std=0.1, seed=1)
    for i in range(3):
        ref = _ref_activation(peft_reference(tiny_qwen2.model, ws.select(i)), tiny_qwen2.tokenizer, probes) - base
        assert (deltas[i] - ref).abs().max() <= 1e-5 * ref.abs().max()
        assert report.results[i].norm == pytest.approx(float(ref.norm()), rel=1e-5)


def test_k_per_forward_equals_one_per_forward(tiny_qwen2, tmp_path):
    ws = LoraWeights.random(_layout(tiny_qwen2), num_adapters=4, std=0.1, seed=3)
    ex = DeltaExtractor(tiny_qwen2, cache=tmp_path / "c")
    batched = ex.lora_deltas(ws)
    single = torch.cat([ex.lora_deltas(ws.select(i)) for i in range(4)])
    assert batched.shape == (4, 64)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_zero_adapter_gives_exactly_zero(tiny_qwen2, tmp_path):
    zero = save_adapter(LoraWeights.zeros(_layout(tiny_qwen2)), tmp_path / "zero")
    dirs = _adapters(tiny_qwen2, tmp_path, n=2)
    report = compute_deltas(tiny_qwen2, sources_from_adapters([zero, *dirs]), cache=tmp_path / "c", batch_adapters=3)
    ids, d = report.load()
    assert torch.count_nonzero(d[ids.index(str(zero))]) == 0
    assert all(float(d[ids.index(str(x))].norm()) > 0 for x in dirs)


def test_mode_a_from_manifest_with_families_and_stats(tiny_qwen2, tmp_path):
    zoo = tmp_path / "zoo"
    lay = _layout(tiny_qwen2, targets="q,v")
    for fam, seed in (("math", 10), ("text", 20)):
        ws = LoraWeights.random(lay, num_adapters=3, std=0.05 if fam == "math" else 0.2, seed=seed)
        for i in range(3):
            rel = f"{fam}/s{i}"
            save_adapter(ws.select(i), zoo / rel)
            append_entry(
                zoo,
                ZooEntry(
                    id=f"{fam}/s{i}",
                    task=fam,
                    family=fam,
                    seed=i,
                    path=rel,
                    sha256=file_sha256(zoo / rel / "adapter_model.safetensors"),
                ),
            )
    sources = sources_from_manifest(zoo)
    assert [s.family for s in sources] == ["math"] * 3 + ["text"] * 3
    report = compute_deltas(tiny_qwen2, sources, cache=tmp_path / "c", batch_adapters=4)
    fams = report.stats["norms_by_family"]
    assert set(fams) == {"math", "text"} and fams["math"]["count"] == 3
    assert fams["math"]["mean"] < fams["text"]["mean"]
    index = DeltaCache(tmp_path / "c").read_index()
    assert {r["adapter"] for r in index} == {s.id for s in sources}
    assert all(r["family"] in ("math", "text") for r in index)
    rec = DeltaCache(tmp_path / "c").lookup("text/s1", probes="generic5")
    assert rec is not None and (tmp_path / "c" / rec["file"]).is_file()


def test_mixed_layouts_are_grouped(tiny_qwen2, tmp_path):
    a = _adapters(tiny_qwen2, tmp_path, n=2, rank=4, seed=1)
    b = _adapters(tiny_qwen2, tmp_path, n=2, rank=2, targets="q,v", seed=2)
    report = compute_deltas(
        tiny_qwen2, sources_from_adapters([a[0], b[0], a[1], b[1]]), cache=tmp_path / "c", batch_adapters=8
    )
    assert report.counts()["computed"] == 4
    ex = DeltaExtractor(tiny_qwen2, cache=tmp_path / "c2")
    ws = LoraWeights.random(_layout(tiny_qwen2, 2, "q,v"), num_adapters=2, std=0.1, seed=2)
    ids, d = report.load()
    assert ids == sorted(ids)  # results come in sorted-id order
    torch.testing.assert_close(d[ids.index(str(b[0]))], ex.lora_deltas(ws.select(0))[0], rtol=1e-5, atol=1e-6)


def test_nan_adapter_is_named_skipped_and_reported(tiny_qwen2, tmp_path):
    good = _adapters(tiny_qwen2, tmp_path, n=2)
    w = LoraWeights.random(_layout(tiny_qwen2), std=0.1, seed=9)
    w.B["1.down_proj"][0, 0] = float("inf")
    bad = save_adapter(w, tmp_path / "diverged")
    missing = tmp_path / "missing"
    with pytest.warns(UserWarning, match="diverged"):
        report = compute_deltas(
            tiny_qwen2, sources_from_adapters([good[0], bad, missing, good[1]]), cache=tmp_path / "c"
        )
    assert report.counts() == {"computed": 2, "cached": 0, "broken": 2}
    broken = {b["id"]: b["error"] for b in report.stats["broken"]}
    assert "non-finite" in broken[str(bad)] and "1.down_proj" in broken[str(bad)]
    assert str(missing) in broken
    assert len(report.load()[0]) == 2


# ------------------------------------------------------------------------------------------ Mode B


def _perturbed_copy(backbone, out: Path, seed=0, std=1e-2) -> Path:
    import copy

    m = copy.deepcopy(backbone.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "layers." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * std)
    m.save_pretrained(out)
    return out


def test_mode_b_model_directory(tiny_qwen2, tmp_path):
    d = _perturbed_copy(tiny_qwen2, tmp_path / "ft")
    report = compute_deltas(tiny_qwen2, sources_from_models([d]), cache=tmp_path / "c")
    assert report.counts()["computed"] == 1
    from transformers import AutoModelForCausalLM

    probes = get_probe_set("generic5").texts
    ft = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    ref = _ref_activation(ft, tiny_qwen2.tokenizer, probes) - _ref_activation(
        tiny_qwen2.model, tiny_qwen2.tokenizer, probes
    )
    _, delta = report.load()
    assert float(ref.norm()) > 0
    assert (delta[0] - ref).abs().max() <= 1e-5 * ref.abs().max()
    again = compute_deltas(tiny_qwen2, sources_from_models([d]), cache=tmp_path / "c")
    assert again.counts()["cached"] == 1


def test_mode_b_of_merged_lora_equals_mode_a(tiny_qwen2, tmp_path):
    w = LoraWeights.random(_layout(tiny_qwen2), std=0.1, seed=4)
    adapter = save_adapter(w, tmp_path / "lora")
    merged = peft_reference(tiny_qwen2.model, w).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    a = compute_deltas(tiny_qwen2, sources_from_adapters([adapter]), cache=tmp_path / "c").load()[1][0]
    b = compute_deltas(tiny_qwen2, sources_from_models([tmp_path / "merged"]), cache=tmp_path / "c").load()[1][0]
    assert float(a.norm()) > 0.1
    assert _rel(b, a) <= 1e-4


def test_mode_b_refuses_other_architecture(tiny_qwen2, tiny_llama, tmp_path):
    tiny_llama.model.save_pretrained(tmp_path / "llama")
    with pytest.warns(UserWarning, match="differs from backbone tiny-qwen2"):
        report = compute_deltas(
            tiny_qwen2, sources_from_models([tmp_path / "llama", tmp_path / "nothing"]), cache=tmp_path / "c"
        )
    assert report.counts() == {"computed": 0, "cached": 0, "broken": 2}
    assert "no config.json" in report.broken[1].error


# ------------------------------------------------------------------------------------------ cache


def test_cache_hit_and_path_is_not_a_key(tiny_qwen2, tmp_path):
    dirs = _adapters(tiny_qwen2, tmp_path, n=2)
    first = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=tmp_path / "c")
    assert first.counts()["computed"] == 2
    second = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=tmp_path / "c")
    assert second.counts() == {"computed": 0, "cached": 2, "broken": 0}
    import shutil

    moved = shutil.copytree(dirs[0], tmp_path / "elsewhere" / "copy")
    third = compute_deltas(tiny_qwen2, sources_from_adapters([moved]), cache=tmp_path / "c")
    assert third.counts()["cached"] == 1 and third.results[0].key == first.results[0].key
    assert len(DeltaCache(tmp_path / "c").read_index()) == 3  # the copy's id is new; reruns add no lines


def test_cache_invalidation_on_every_key_part(tiny_qwen2, tmp_path):
    ws = LoraWeights.random(_layout(tiny_qwen2), std=0.1, seed=5)
    adapter = save_adapter(ws, tmp_path / "a")
    cache = tmp_path / "c"
    src = sources_from_adapters([adapter])

    def key_of(backbone=tiny_qwen2, probes="generic5", rep="last_token"):
        r = compute_deltas(backbone, src, probes=probes, representation=rep, cache=cache)
        return r.results[0].key, r.results[0].status

    k0, s0 = key_of()
    assert s0 == "computed" and key_of() == (k0, "cached")
    g = get_probe_set("generic5")
    edited = ProbeSet("generic5", g.texts[:4] + (g.texts[4] + " ",))
    k_probe, s = key_of(probes=edited)
    assert s == "computed" and k_probe != k0
    k_rep, s = key_of(rep="mean")
    assert s == "computed" and k_rep != k0
    bf16 = load_backbone("tiny-qwen2", RuntimeConfig(dtype="bfloat16"))
    k_dtype, s = key_of(backbone=bf16)
    assert s == "computed" and k_dtype != k0
    other = dataclasses.replace(tiny_qwen2, weights_id="0" * 64)
    k_bb, s = key_of(backbone=other)
    assert s == "computed" and k_bb != k0
    ws.B["0.q_proj"][0, 0] += 1e-3
    save_adapter(ws, adapter)  # same path, new bytes
    k_bytes, s = key_of()
    assert s == "computed" and k_bytes != k0
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] * 2
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    k_cfg, s = key_of()
    assert s == "computed" and k_cfg != k_bytes
    assert len({k0, k_probe, k_rep, k_dtype, k_bb, k_bytes, k_cfg}) == 7


def test_base_activation_is_cached(tiny_qwen2, tmp_path):
    ex = DeltaExtractor(tiny_qwen2, cache=tmp_path / "c")
    v = ex.base_activation()
    hit = DeltaCache(tmp_path / "c").get(ex.base_key, name="v")
    assert hit is not None and torch.equal(hit.tensor, v) and hit.metadata["adapter"] == "__base__"
    ex2 = DeltaExtractor(tiny_qwen2, cache=tmp_path / "c")
    ex2.activation = None  # a cache hit must not recompute
    assert torch.equal(ex2.base_activation(), v)


def test_cache_files_are_safetensors_with_metadata(tiny_qwen2, tmp_path):
    d = _adapters(tiny_qwen2, tmp_path, n=1)
    r = compute_deltas(tiny_qwen2, sources_from_adapters(d), cache=tmp_path / "c").results[0]
    f = tmp_path / "c" / r.file
    tensors = {k: v.clone() for k, v in load_file(f).items()}
    assert list(tensors) == ["delta"] and tensors["delta"].dtype == torch.float32
    from safetensors import safe_open

    with safe_open(f, "pt") as fh:
        meta = fh.metadata()
    assert meta["key"] == r.key and meta["adapter"] == r.id and meta["probes"] == "generic5"
    assert (
        meta["repr"] == "last_token"
        and meta["backbone"] == "tiny-qwen2"
        and float(meta["norm"]) == pytest.approx(r.norm)
    )
    # a damaged file is a miss, recomputed and rewritten
    f.write_bytes(b"garbage")
    again = compute_deltas(tiny_qwen2, sources_from_adapters(d), cache=tmp_path / "c")
    assert again.counts()["computed"] == 1 and torch.equal(load_file(f)["delta"], tensors["delta"])
    assert not [p for p in f.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_determinism_bit_identical(tiny_qwen2, tmp_path):
    dirs = _adapters(tiny_qwen2, tmp_path, n=3)
    a = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=tmp_path / "c1", batch_adapters=2).load()[1]
    b = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=tmp_path / "c2", batch_adapters=2).load()[1]
    assert torch.equal(a, b)
    c = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=tmp_path / "c3", batch_adapters=3).load()[1]
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


_WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from deltalora.backbones import load_backbone
    from deltalora.deltas import compute_deltas, sources_from_adapters
    cache, shard, *dirs = sys.argv[1:]
    r = compute_deltas(load_backbone("tiny-qwen2"), sources_from_adapters(dirs), cache=cache, batch_adapters=2,
                       shard=None if shard == "all" else shard)
    print(r.counts())
    """
)


def test_concurrent_shard_workers_share_one_cache(tiny_qwen2, tmp_path):
    dirs = [str(d) for d in _adapters(tiny_qwen2, tmp_path, n=6)]
    cache = tmp_path / "shared"
    env = {**os.environ, "DELTALORA_HOME": str(tmp_path / "home")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(cache), shard, *dirs],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in ("0/2", "1/2", "all")  # the third overlaps both: same keys written concurrently
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    index = DeltaCache(cache).read_index()
    assert {r["adapter"] for r in index} == {os.path.normpath(d) for d in dirs}
    assert len(index) <= 12 and all(json.dumps(r) for r in index)
    local = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=tmp_path / "local", batch_adapters=2).load()[
        1
    ]
    again = compute_deltas(tiny_qwen2, sources_from_adapters(dirs), cache=cache)
    assert again.counts()["cached"] == 6
    torch.testing.assert_close(again.load()[1], local, rtol=1e-5, atol=1e-6)


def test_shards_are_disjoint_and_cover():
    srcs = [DeltaSource(id=f"id{i:02d}", path=Path(f"/x/{i}")) for i in (5, 3, 9, 1, 0, 7, 2)]
    parts = [select_shard(srcs, (i, 3)) for i in range(3)]
    ids = [s.id for p in parts for s in p]
    assert sorted(ids) == sorted(s.id for s in srcs) and len(set(ids)) == len(ids)
    assert [s.id for s in parts[0]] == ["id00", "id03", "id09"]
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    assert select_shard(srcs, parse_shard(None)) == select_shard(srcs, None) == sorted(srcs, key=lambda s: s.id)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ShardError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(DeltaError, match="given twice"):
        sources_from_adapters(["/a/b", "/a/b/"])


def test_robust_z_outliers():
    assert robust_z([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]
    results = [
        DeltaResult(f"r{i}", "lora", "computed", "f", norm=n) for i, n in enumerate([1.0, 1.1, 0.9, 1.05, 0.95, 9.0])
    ]
    results.append(DeltaResult("bad", "lora", "broken", "f", error="nan"))
    stats = delta_stats(results)
    assert [o["id"] for o in stats["outliers"]] == ["r5"]
    assert stats["norms_by_family"]["f"]["count"] == 6 and stats["broken"][0]["id"] == "bad"


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli():
    import typer
    from typer.testing import CliRunner

    from deltalora.cli.deltas import app

    root = typer.Typer()
    root.add_typer(app, name="deltas")
    runner = CliRunner()
    return lambda *args: runner.invoke(root, ["deltas", *map(str, args)])


def test_cli_compute_json_is_idempotent(cli, tiny_qwen2, tmp_path, deltalora_home):
    dirs = _adapters(tiny_qwen2, tmp_path, n=3)
    args = [
        "compute",
        "--backbone",
        "tiny-qwen2",
        *[x for d in dirs for x in ("--adapter", d)],
        "--batch-adapters",
        "2",
        "--json",
    ]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["counts"] == {"computed": 3, "cached": 0, "broken": 0}
    assert out["cache_dir"] == str(deltalora_home / "deltas")
    r2 = cli(*args, "--shard", "1/2")
    assert json.loads(r2.stdout)["counts"] == {"computed": 0, "cached": 1, "broken": 0}


def test_cli_errors_are_one_line(cli, tmp_path, deltalora_home):
    r = cli("compute", "--backbone", "tiny-qwen2")
    assert r.exit_code == 2 and "pass exactly one of --zoo" in r.output
    r = cli("compute", "--backbone", "tiny-qwen2", "--adapter", tmp_path, "--shard", "2/2")
    assert r.exit_code == 2 and "--shard '2/2'" in r.output
    r = cli("compute", "--backbone", "tiny-qwen2", "--adapter", tmp_path, "--probes", "nope")
    assert r.exit_code == 2 and "unknown probe set" in r.output


def test_cli_probes(cli):
    r = cli("probes", "--json")
    names = [p["name"] for p in json.loads(r.stdout)]
    assert "generic5" in names and "neutral24" in names
    r = cli("probes", "generic5")
    assert r.exit_code == 0 and "### Response:" in r.stdout
