"""Backbone registry, tiny backbones, the packaged-weights pipeline and ``deltalora models``, all offline.

The packaged pipeline is tested end to end without a network: a tiny seeded Qwen2 is written as a real
F32 GGUF (with its tokenizer and chat template) by the ``gguf`` package, cut into chunks, packed into
fake wheels that a fake downloader hands out, and then fetched -> joined -> verified -> dequantised by
transformers -> saved as safetensors -> loaded by ``load_backbone``, which must reproduce the original
model's logits exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import threading
import time
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from deltalora.backbones import (
    Architecture,
    architecture_of,
    backbone_names,
    get_spec,
    load_backbone,
    packaged,
    register_backbone,
    registry,
)
from deltalora.backbones.registry import BackboneSpec, PackagedWeights
from deltalora.backbones.tiny import build_tiny
from deltalora.cli import app
from deltalora.config import RuntimeConfig
from deltalora.errors import BackboneError

FAKE = "fake-gguf-qwen2"
# Join order is the declared package order, deliberately not alphabetical.
FAKE_PACKAGES = (("zz-chunks", "1.0"), ("aa-chunks", "1.0"), ("mm-chunks", "2.0"))
CHUNKS_PER_WHEEL = 3

# ---------------------------------------------------------------------------------------------------
# helpers: a real GGUF of a tiny model, fake chunk wheels, a fake downloader

_GGUF_LEAF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GGUF_TOP = {"model.embed_tokens": "token_embd", "lm_head": "output", "model.norm": "output_norm"}


def write_qwen2_gguf(model, tokenizer, path: Path) -> None:
    """Write a Qwen2 model and its byte-level tokenizer as an F32 GGUF, the way llama.cpp names things."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_scores([0.0] * len(tokens))  # no merges in a byte vocabulary; scores let transformers derive none
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_chat_template(tokenizer.chat_template)
    for key, value in model.state_dict().items():
        base, suffix = key.rsplit(".", 1)
        if base in _GGUF_TOP:
            name = _GGUF_TOP[base]
        else:  # model.layers.{i}.{rest}
            _, _, i, rest = base.split(".", 3)
            name = f"blk.{i}.{_GGUF_LEAF[rest]}"
        w.add_tensor(f"{name}.{suffix}", value.detach().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _module(dist: str) -> str:
    return dist.replace("-", "_")


def make_wheels(data: bytes, packages, out: Path, per_wheel: int = CHUNKS_PER_WHEEL) -> dict[str, Path]:
    """Cut ``data`` into ``len(packages) * per_wheel`` chunks and pack them as chunk wheels.

    Members are written into each zip in *reverse* order (plus files the pattern must skip), so only a
    reader that sorts members by name and takes wheels in package order rebuilds ``data``.
    """
    out.mkdir(parents=True, exist_ok=True)
    n = len(packages) * per_wheel
    bounds = np.linspace(0, len(data), n + 1).astype(int)
    pieces = [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    wheels = {}
    for w, (dist, version) in enumerate(packages):
        mod = _module(dist)
        path = out / f"{mod}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{mod}/__init__.py", "raise ImportError('data only')\n")
            for j in reversed(range(per_wheel)):
                zf.writestr(f"{mod}/data/part{j + 1:02d}.bin", pieces[w * per_wheel + j])
            zf.writestr(f"{mod}-{version}.dist-info/METADATA", f"Name: {dist}\nVersion: {version}\n")
        wheels[dist] = path
    return wheels


class FakeDownloader:
    """Stands in for ``pip download --no-deps``: copies a prebuilt wheel into ``dest``."""

    def __init__(self, wheels: dict[str, Path]):
        self.wheels = wheels
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, version: str, dest: Path) -> Path:
        self.calls.append((name, version))
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.wheels[name], dest / self.wheels[name].name))


def fake_spec(data: bytes, arch: dict, **overrides) -> BackboneSpec:
    weights = PackagedWeights(
        packages=FAKE_PACKAGES,
        member_pattern=r"^[a-z]+_chunks/data/part\d+\.bin$",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        filename="fake-qwen2.f32.gguf",
    )
    weights = dataclasses.replace(weights, **overrides)
    return BackboneSpec(name=FAKE, kind="packaged", description="test-only fake", arch=arch, packaged=weights)


@dataclasses.dataclass
class FakeGGUF:
    data: bytes
    arch: dict
    model: torch.nn.Module
    tokenizer: object
    wheels: dict[str, Path]


@pytest.fixture(scope="module")
def fake_gguf(tmp_path_factory) -> FakeGGUF:
    tmp = tmp_path_factory.mktemp("gguf")
    # the tiny Qwen2 with its vocabulary cut to the tokenizer's 259 tokens (a GGUF states one size for both)
    base = get_spec("tiny-qwen2")
    spec = dataclasses.replace(base, name=FAKE, arch=dict(base.arch, vocab_size=259))
    model, tokenizer = build_tiny(spec)
    model.eval()
    write_qwen2_gguf(model, tokenizer, tmp / "model.gguf")
    data = (tmp / "model.gguf").read_bytes()
    return FakeGGUF(data, dict(spec.arch), model, tokenizer, make_wheels(data, FAKE_PACKAGES, tmp / "wheels"))


@pytest.fixture
def isolated_registry(monkeypatch):
    """A copy of the registry, so tests may register names without leaking them."""
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    return registry._REGISTRY


def _leftovers(root: Path) -> list[str]:
    parent = root / "backbones"
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# ---------------------------------------------------------------------------------------------------
# registry

REGISTERED = backbone_names()


def test_builtin_names_are_registered():
    for name in (
        "tiny-qwen2",
        "tiny-llama",
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-1.5b",
    ):
        assert name in REGISTERED


@pytest.mark.parametrize("name", REGISTERED)
def test_every_name_resolves_and_has_offline_architecture(name, monkeypatch):
    def no_network(*a, **k):  # architecture_of must never reach the hub for a registered name
        raise AssertionError("architecture_of went to the hub")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_network)
    spec = get_spec(name)
    assert spec.name == name
    arch = architecture_of(name)
    assert arch == Architecture.from_config(spec.arch)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert getattr(arch, k) == spec.arch[k]
    summary = spec.summary()
    assert summary["name"] == name and summary["architecture"]["model_type"] == spec.arch["model_type"]
    if spec.kind == "packaged":
        pw = spec.packaged
        assert len(pw.sha256) == 64 and pw.size > 0 and pw.packages
        assert all(v and "==" not in n for n, v in pw.packages)


def test_unknown_name_is_a_one_line_backbone_error():
    with pytest.raises(BackboneError) as err:
        get_spec("no-such-backbone")
    msg = str(err.value)
    assert "no-such-backbone" in msg and "\n" not in msg and "models list" in msg


def test_architecture_of_unknown_name_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as err:
        architecture_of(str(tmp_path / "missing-model-dir"))
    assert "\n" not in str(err.value)


def test_duplicate_registration_raises(isolated_registry):
    spec = BackboneSpec(name="extra-test-backbone", kind="hub", description="x", arch=get_spec("tiny-qwen2").arch)
    register_backbone("extra-test-backbone")(lambda: spec)
    assert get_spec("extra-test-backbone") is spec
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone("extra-test-backbone")(lambda: spec)
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone("tiny-qwen2")(lambda: spec)


def test_tiny_architecture_matches_built_model():
    for name in ("tiny-qwen2", "tiny-llama"):
        model, tokenizer = build_tiny(get_spec(name))
        assert Architecture.from_config(model.config) == architecture_of(name)
        assert len(tokenizer) <= model.config.vocab_size


# ---------------------------------------------------------------------------------------------------
# tiny backbones


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_tiny_is_deterministic_and_frozen(name, deltalora_home):
    torch.manual_seed(123)  # the global RNG must not matter
    a = load_backbone(name)
    torch.manual_seed(456)
    b = load_backbone(name)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.weights_id == b.weights_id and len(a.weights_id) == 64
    for bb in (a, b):
        assert not bb.model.training
        assert not any(p.requires_grad for p in bb.model.parameters())
        assert all(p.dtype == torch.float32 for p in bb.model.parameters())
        assert bb.tokenizer.pad_token and bb.tokenizer.eos_token and bb.tokenizer.chat_template
        assert bb.spec is not None and bb.spec.kind == "tiny"
    assert not deltalora_home.exists() or not any((deltalora_home / "backbones").glob("*"))


def test_tiny_backbones_differ():
    assert load_backbone("tiny-qwen2").weights_id != load_backbone("tiny-llama").weights_id


def test_tiny_dtype_from_runtime_config():
    b = load_backbone("tiny-qwen2", RuntimeConfig(device="cpu", dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in b.model.parameters())
    assert b.device == torch.device("cpu") and not b.model.training
    assert not any(p.requires_grad for p in b.model.parameters())


def test_tokenizer_round_trips_and_applies_chat_template(tiny_qwen2):
    tok = tiny_qwen2.tokenizer
    text = "héllo wörld <|im_end|> 123"
    assert tok.decode(tok(text).input_ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------------
# packaged weights, offline


def test_fake_gguf_is_a_real_gguf(fake_gguf, tmp_path):
    (tmp_path / "m.gguf").write_bytes(fake_gguf.data)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert len(reader.tensors) == len(fake_gguf.model.state_dict())


def test_join_order_members_sorted_wheels_in_package_order(fake_gguf, tmp_path):
    spec = fake_spec(fake_gguf.data, fake_gguf.arch)
    wheels = [fake_gguf.wheels[n] for n, _ in FAKE_PACKAGES]
    with zipfile.ZipFile(wheels[0]) as zf:  # the fixture really stores members out of order
        names = [n for n in zf.namelist() if n.endswith(".bin")]
        assert names != sorted(names)
    sha, size = packaged._join_and_hash(spec, wheels, tmp_path / "joined", progress=False)
    assert (tmp_path / "joined").read_bytes() == fake_gguf.data
    assert (sha, size) == (spec.packaged.sha256, spec.packaged.size)
    # any other wheel order gives other bytes
    sha2, _ = packaged._join_and_hash(spec, sorted(wheels), tmp_path / "joined2", progress=False)
    assert sha2 != sha


def test_fetch_convert_load_round_trip(fake_gguf, deltalora_home, isolated_registry):
    spec = fake_spec(fake_gguf.data, fake_gguf.arch)
    isolated_registry[FAKE] = lambda: spec
    dl = FakeDownloader(fake_gguf.wheels)
    assert not packaged.is_cached(spec)

    path = packaged.fetch_packaged(spec, root=deltalora_home, downloader=dl, progress=False)

    assert path == packaged.cache_dir(spec, deltalora_home) and packaged.is_cached(spec, deltalora_home)
    assert dl.calls == list(FAKE_PACKAGES)  # downloaded in package order
    marker = packaged.read_marker(path)
    assert marker["sha256"] == spec.packaged.sha256 and marker["bytes"] == len(fake_gguf.data)
    assert marker["packages"] == [f"{n}=={v}" for n, v in FAKE_PACKAGES]
    assert set(marker["seconds"]) == {"download", "join_verify", "convert"}
    assert list(path.glob("*.safetensors")) and (path / "config.json").is_file()
    assert not (path / "gguf").exists(), "the joined GGUF must not stay in the cache"
    assert not (deltalora_home / "downloads" / FAKE).exists(), "downloads are discarded after success"
    assert _leftovers(deltalora_home) == [FAKE]

    # idempotent: the second call is a cache hit and downloads nothing
    again = packaged.fetch_packaged(spec, root=deltalora_home, downloader=dl, progress=False)
    assert again == path and len(dl.calls) == len(FAKE_PACKAGES)

    # load through the public loader (cached, so no downloader is needed) and compare with the original
    b = load_backbone(FAKE, fetch_missing=False, progress=False)
    assert b.weights_id == spec.packaged.sha256 and b.source == str(path)
    assert not b.model.training and not any(p.requires_grad for p in b.model.parameters())
    assert Architecture.from_config(b.config) == Architecture.from_config(spec.arch)
    ref_sd, got_sd = fake_gguf.model.state_dict(), b.model.state_dict()
    assert ref_sd.keys() == got_sd.keys()
    assert all(torch.equal(ref_sd[k], got_sd[k]) for k in ref_sd)
    tok = b.tokenizer
    assert tok.chat_template == fake_gguf.tokenizer.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "def f(x):\n    return x  # ünïcode <|im_end|>"
    assert tok(text).input_ids == fake_gguf.tokenizer(text).input_ids
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        assert torch.equal(b.model(ids).logits, fake_gguf.model(ids).logits)


def test_concurrent_fetches_download_once(fake_gguf, deltalora_home):
    """Two fetches of one backbone at once: the second waits for the first and then hits the cache."""
    spec = fake_spec(fake_gguf.data, fake_gguf.arch)
    inner = FakeDownloader(fake_gguf.wheels)

    def slow(name, version, dest):
        time.sleep(0.05)
        return inner(name, version, dest)

    results, errors = [], []

    def go():
        try:
            results.append(packaged.fetch_packaged(spec, root=deltalora_home, downloader=slow, progress=False))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results[0] == results[1] == packaged.cache_dir(spec, deltalora_home)
    assert inner.calls == list(FAKE_PACKAGES)
    assert _leftovers(deltalora_home) == [FAKE]


def test_sha_mismatch_caches_nothing(fake_gguf, deltalora_home):
    spec = fake_spec(fake_gguf.data, fake_gguf.arch, sha256="0" * 64)
    dl = FakeDownloader(fake_gguf.wheels)
    with pytest.raises(BackboneError) as err:
        packaged.fetch_packaged(spec, root=deltalora_home, downloader=dl, progress=False)
    msg = str(err.value)
    assert FAKE in msg and "nothing was cached" in msg and "\n" not in msg
    assert not packaged.cache_dir(spec, deltalora_home).exists()
    assert _leftovers(deltalora_home) == [], "no scratch directories may be left beside the cache"
    assert not (deltalora_home / "downloads" / FAKE).exists()
    assert not packaged.is_cached(spec, deltalora_home)


def test_size_mismatch_caches_nothing(fake_gguf, deltalora_home):
    # a package dropped from the set: fewer bytes, other hash
    spec = fake_spec(fake_gguf.data, fake_gguf.arch)
    spec = dataclasses.replace(spec, packaged=dataclasses.replace(spec.packaged, packages=FAKE_PACKAGES[:2]))
    with pytest.raises(BackboneError, match="nothing was cached"):
        packaged.fetch_packaged(spec, root=deltalora_home, downloader=FakeDownloader(fake_gguf.wheels), progress=False)
    assert _leftovers(deltalora_home) == [] and not packaged.is_cached(spec, deltalora_home)


def test_corrupt_wheel_is_a_clear_error(fake_gguf, deltalora_home, tmp_path):
    bad = dict(fake_gguf.wheels)
    bad["aa-chunks"] = tmp_path / "aa_chunks-1.0-py3-none-any.whl"
    bad["aa-chunks"].write_bytes(b"<html>502 Bad Gateway</html>")
    spec = fake_spec(fake_gguf.data, fake_gguf.arch)
    with pytest.raises(BackboneError) as err:
        packaged.fetch_packaged(spec, root=deltalora_home, downloader=FakeDownloader(bad), progress=False)
    msg = str(err.value)
    assert "aa_chunks-1.0-py3-none-any.whl" in msg and "not a valid zip" in msg and "\n" not in msg
    assert _leftovers(deltalora_home) == [] and not packaged.is_cached(spec, deltalora_home)


def test_corrupt_member_data_is_a_clear_error(fake_gguf, deltalora_home, tmp_path):
    # a zip whose directory is intact but whose member bytes are damaged (bad CRC / broken deflate stream)
    src = fake_gguf.wheels["mm-chunks"]
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("part02.bin"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 8, start + 8 + 64):
        raw[i] ^= 0xFF
    bad = dict(fake_gguf.wheels, **{"mm-chunks": tmp_path / src.name})
    bad["mm-chunks"].write_bytes(bytes(raw))
    assert zipfile.is_zipfile(bad["mm-chunks"])
    spec = fake_spec(fake_gguf.data, fake_gguf.arch)
    with pytest.raises(BackboneError, match="not a valid zip"):
        packaged.fetch_packaged(spec, root=deltalora_home, downloader=FakeDownloader(bad), progress=False)
    assert _leftovers(deltalora_home) == [] and not packaged.is_cached(spec, deltalora_home)


def test_wheel_without_matching_chunks(fake_gguf, deltalora_home):
    spec = fake_spec(fake_gguf.data, fake_gguf.arch, member_pattern=r"^nothing/here\.bin$")
    with pytest.raises(BackboneError, match="package layout changed"):
        packaged.fetch_packaged(spec, root=deltalora_home, downloader=FakeDownloader(fake_gguf.wheels), progress=False)
    assert _leftovers(deltalora_home) == []


def test_wrong_registered_architecture_caches_nothing(fake_gguf, deltalora_home):
    spec = fake_spec(fake_gguf.data, dict(fake_gguf.arch, num_hidden_layers=3))
    with pytest.raises(BackboneError) as err:
        packaged.fetch_packaged(spec, root=deltalora_home, downloader=FakeDownloader(fake_gguf.wheels), progress=False)
    assert "num_hidden_layers" in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(deltalora_home) == [] and not packaged.is_cached(spec, deltalora_home)


def test_pip_download_replaces_a_corrupt_leftover(tmp_path, monkeypatch):
    """A non-zip file with the wheel's name must not be handed back (pip would skip re-downloading it)."""
    leftover = tmp_path / "aa_chunks-1.0-py3-none-any.whl"
    leftover.write_bytes(b"truncated")
    seen = {}

    def fake_run(cmd, **kw):
        seen["existed"] = leftover.exists()
        leftover.write_bytes(_zip_bytes())
        return type("P", (), {"returncode": 0, "stderr": "", "stdout": ""})()

    monkeypatch.setattr(packaged.subprocess, "run", fake_run)
    got = packaged.pip_download("aa-chunks", "1.0", tmp_path)
    assert got == leftover and seen == {"existed": False} and zipfile.is_zipfile(got)
    # a valid wheel already there is reused without running pip
    monkeypatch.setattr(packaged.subprocess, "run", lambda *a, **k: pytest.fail("pip ran again"))
    assert packaged.pip_download("aa-chunks", "1.0", tmp_path) == leftover


def test_pip_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(
        packaged.subprocess,
        "run",
        lambda *a, **k: type(
            "P", (), {"returncode": 1, "stderr": "x\nERROR: No matching distribution", "stdout": ""}
        )(),
    )
    with pytest.raises(BackboneError) as err:
        packaged.pip_download("aa-chunks", "1.0", tmp_path)
    assert "aa-chunks==1.0" in str(err.value) and "No matching distribution" in str(err.value)
    assert "\n" not in str(err.value)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x", "y")
    return buf.getvalue()


def test_load_uncached_without_fetch_is_an_error(deltalora_home):
    with pytest.raises(BackboneError, match="models fetch smollm2-135m-instruct"):
        load_backbone("smollm2-135m-instruct", fetch_missing=False)


# ---------------------------------------------------------------------------------------------------
# CLI

runner = CliRunner()


def test_cli_models_list_json(deltalora_home, fake_gguf, isolated_registry):
    spec = fake_spec(fake_gguf.data, fake_gguf.arch)
    isolated_registry[FAKE] = lambda: spec
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(backbone_names())
    for name, row in rows.items():
        assert row["cached"] is (get_spec(name).kind == "tiny"), name
        assert row["architecture"] == get_spec(name).arch
    # after a fetch the flag flips
    packaged.fetch_packaged(spec, downloader=FakeDownloader(fake_gguf.wheels), progress=False)
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    assert rows[FAKE]["cached"] is True
    text = runner.invoke(app, ["models", "list"])
    assert text.exit_code == 0 and FAKE in text.stdout and "ready" in text.stdout


def test_cli_models_fetch_tiny_json(deltalora_home):
    result = runner.invoke(app, ["models", "fetch", "tiny-qwen2", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["name"] == "tiny-qwen2" and info["already_cached"] is True
    assert info["weights_id"] == load_backbone("tiny-qwen2").weights_id
    assert info["parameters"] > 0


def test_cli_models_fetch_unknown_exits_2_with_one_line(deltalora_home):
    result = runner.invoke(app, ["models", "fetch", "nope"])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("error: ") and "'nope'" in err and "\n" not in err
    assert result.stdout == ""
