"""Generator checkpoints (round trip, validation) and `deltalora generate` end to end against stock PEFT."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from deltalora.cli import app
from deltalora.config import LoraSpec, RuntimeConfig
from deltalora.errors import ConfigError, DeltaLoraError
from deltalora.generators import build_generator
from deltalora.generators.checkpoint import (
    META_KEY,
    GeneratorCheckpointError,
    load_generator,
    read_checkpoint_metadata,
    save_generator,
)
from deltalora.generators.inference import (
    condition_items,
    condition_texts,
    encode_condition,
    generate_adapter,
    load_condition_encoder,
    sample_condition,
    texts_sha256,
)
from deltalora.lora import derive_layout, inject, load_adapter
from deltalora.lora.adapter_io import CONFIG_NAME, WEIGHTS_NAME

from .helpers import encode

ENCODER, ENC_DIM = "tiny-encoder", 32  # the conditions package's seeded test encoder
SPEC = LoraSpec(rank=4, alpha=8, targets="q,k,v,o,gate,up,down")
N_PROMPTS = 3
RECORDS = [
    {"prompt": "What is 2 + 2?", "response": "4"},
    {"prompt": "Name a primary colour.", "answer": "red"},
    {"prompt": "Spell 'cat' backwards.", "response": "tac"},
    {"prompt": "Is ice cold?", "response": "yes"},
    {"prompt": "Count the letters in 'lora'.", "response": "4"},
]
TEXT = ["The adapter came from a generator.", "Short one."]


def trained_like(gen: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (the zero-initialised head outputs included) non-zero values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return gen


@pytest.fixture
def ckpt(tiny_qwen2, tmp_path) -> Path:
    torch.manual_seed(0)
    gen = trained_like(
        build_generator(
            "compact", derive_layout(tiny_qwen2.arch, SPEC), ENC_DIM, N_PROMPTS, head_hidden=8, trunk_width=16
        )
    )
    return save_generator(
        gen, tmp_path / "gen.safetensors", {"backbone": "tiny-qwen2", "encoder": ENCODER, "run": "unit"}
    )


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("options", [{}, {"learn_base_a": True, "pooling": "mean"}])
def test_checkpoint_round_trip(tiny_qwen2, tmp_path, options):
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    torch.manual_seed(0)
    gen = trained_like(build_generator("compact", layout, ENC_DIM, N_PROMPTS, **options))
    path = save_generator(gen, tmp_path / "g.safetensors", {"backbone": "tiny-qwen2", "encoder": ENCODER, "steps": 10})
    loaded = load_generator(path)
    assert loaded.spec == gen.spec and loaded.layout == layout
    assert (loaded.backbone, loaded.encoder, loaded.condition_form) == ("tiny-qwen2", ENCODER, "prompts")
    assert loaded.extra == {"steps": 10} and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    want, got = gen.state_dict(), loaded.gen.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert not loaded.gen.training
    c = torch.randn(2, N_PROMPTS, ENC_DIM)
    a, b = gen(c), loaded.gen(c)
    for s in layout.slots:
        assert torch.equal(a.A[s.key], b.A[s.key]) and torch.equal(a.B[s.key], b.B[s.key])
    # same content, same bytes; the metadata is readable without building anything
    again = save_generator(
        gen, tmp_path / "g2.safetensors", {"backbone": "tiny-qwen2", "encoder": ENCODER, "steps": 10}
    )
    assert again.read_bytes() == path.read_bytes()
    meta = read_checkpoint_metadata(path)
    assert meta["lora"]["rank"] == 4 and meta["backbone"]["architecture"]["hidden_size"] == 64
    assert meta["num_parameters"] == sum(p.numel() for p in gen.parameters())


def test_checkpoint_round_trip_hyperconv(tiny_qwen2, tmp_path):
    """Also for a generator with non-persistent buffers (hyperconv's tokenizer mask): they are rebuilt, not loaded."""
    layout = derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, alpha=8, targets="q,v"))
    torch.manual_seed(0)
    gen = build_generator("hyperconv", layout, ENC_DIM, 4)
    path = save_generator(gen, tmp_path / "h.safetensors", {"backbone": "tiny-qwen2", "encoder": ENCODER})
    loaded = load_generator(path)
    c = torch.randn(2, 4, ENC_DIM)
    a, b = gen(c), loaded.gen(c)
    assert all(torch.equal(a.A[k], b.A[k]) and torch.equal(a.B[k], b.B[k]) for k in a.A)


def _rewrite(src: Path, dst: Path, state=None, meta=None) -> Path:
    """A copy of checkpoint ``src`` with its tensors and/or its deltalora metadata edited."""
    with safe_open(str(src), framework="pt") as fh:
        header = dict(fh.metadata())
    tensors = load_file(str(src))
    if state is not None:
        tensors = state(tensors)
    if meta is not None:
        m = json.loads(header[META_KEY])
        meta(m)
        header[META_KEY] = json.dumps(m)
    save_file(tensors, str(dst), metadata=header)
    return dst


def _set(path: list, value):
    def edit(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[path[-1]]
        else:
            d[path[-1]] = value

    return edit


CORRUPTIONS = {
    "missing key": (
        dict(state=lambda t: {k: v for k, v in t.items() if not k.startswith("trunk.1.")}),
        "1 missing|2 missing",
    ),
    "extra key": (dict(state=lambda t: {**t, "extra.weight": torch.zeros(2)}), "1 unexpected"),
    "mis-shaped key": (
        dict(state=lambda t: {**t, "layer_emb.weight": torch.zeros(3, 32)}),
        "shape mismatch: layer_emb.weight",
    ),
    "nan": (dict(state=lambda t: {**t, "trunk.1.weight": t["trunk.1.weight"] * float("nan")}), "non-finite"),
    "unknown generator": (
        dict(meta=_set(["generator", "name"], "hypernope")),
        "generator 'hypernope' is not registered",
    ),
    "bad options": (dict(meta=_set(["generator", "options", "pooling"], "max")), "cannot rebuild generator 'compact'"),
    "bad lora": (dict(meta=_set(["lora", "rank"], 0)), "invalid LoRA spec"),
    "bad architecture": (
        dict(meta=_set(["backbone", "architecture"], {"model_type": "qwen2"})),
        "invalid backbone architecture",
    ),
    "no encoder": (dict(meta=_set(["encoder"], KeyError)), "metadata field 'encoder'"),
    "future format": (dict(meta=_set(["format_version"], 99)), "version 99"),
    "bad condition form": (dict(meta=_set(["condition_form"], "answers")), "condition_form"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_mismatched_checkpoints_are_refused(ckpt, tmp_path, case):
    kwargs, message = CORRUPTIONS[case]
    bad = _rewrite(ckpt, tmp_path / "bad.safetensors", **kwargs)
    with pytest.raises(GeneratorCheckpointError, match=message) as err:
        load_generator(bad)
    text = str(err.value)
    assert text.startswith(str(bad)) and "\n" not in text and ";" in text  # file, problem; fix


def test_missing_corrupt_and_foreign_files_are_refused(ckpt, tmp_path, tiny_qwen2):
    cases = {
        "missing": (tmp_path / "nope.safetensors", "not found"),
        "directory": (tmp_path, "is a directory"),
        "truncated": (tmp_path / "trunc.safetensors", "not a readable safetensors file"),
        "garbage": (tmp_path / "junk.safetensors", "not a readable safetensors file"),
        "cut tensors": (tmp_path / "cut.safetensors", "not a readable safetensors file"),
        "plain safetensors": (tmp_path / "plain.safetensors", "not a deltalora generator checkpoint"),
    }
    data = ckpt.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:5])
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"x" * 64)
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    for name, (path, message) in cases.items():
        with pytest.raises(GeneratorCheckpointError, match=message) as err:
            load_generator(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value), name


def test_save_needs_backbone_and_encoder(tiny_qwen2, tmp_path):
    gen = build_generator("compact", derive_layout(tiny_qwen2.arch, SPEC), ENC_DIM, N_PROMPTS)
    with pytest.raises(ValueError, match="encoder"):
        save_generator(gen, tmp_path / "g.safetensors", {"backbone": "tiny-qwen2"})
    with pytest.raises(ValueError, match="condition_form"):
        save_generator(
            gen, tmp_path / "g.safetensors", {"backbone": "tiny-qwen2", "encoder": ENCODER, "condition_form": "x"}
        )
    assert not (tmp_path / "g.safetensors").exists()


# ------------------------------------------------------------------------------------------ generate


def _reference_weights(ckpt: Path, prompts: Path, n: int, seed: int):
    """What the generator outputs for the condition `generate` samples — computed without `generate`."""
    loaded = load_generator(ckpt)
    texts = sample_condition(condition_texts(condition_items(prompts), "prompts", str(prompts)), n, seed)
    enc = load_condition_encoder(ENCODER, RuntimeConfig(device="cpu"))
    with torch.no_grad():
        return loaded.gen(encode_condition(enc, texts).unsqueeze(0)).select(0), texts


def test_generate_end_to_end_matches_stock_peft(tiny_qwen2, ckpt, prompts, tmp_path):
    b = tiny_qwen2
    out = tmp_path / "adapter"
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--generator",
            str(ckpt),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--seed",
            "7",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["out"] == str(out) and report["n_prompts"] == N_PROMPTS and report["num_items"] == len(RECORDS)
    assert report["seconds"]["per_adapter"] > 0 and report["backbone"] == "tiny-qwen2"
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    weights, texts = _reference_weights(ckpt, prompts, N_PROMPTS, seed=7)
    with safe_open(str(out / WEIGHTS_NAME), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["generator_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest() == report["generator_sha256"]
    assert meta["condition_sha256"] == texts_sha256(texts) == report["condition_sha256"]
    assert (meta["encoder"], meta["n_prompts"], meta["seed"], meta["generator"]) == (ENCODER, "3", "7", "compact")
    assert json.loads((out / CONFIG_NAME).read_text())["base_model_name_or_path"] == "tiny-qwen2"

    saved = load_adapter(out, b.arch)
    for s in weights.layout.slots:
        assert torch.equal(saved.A[s.key], weights.A[s.key]) and torch.equal(saved.B[s.key], weights.B[s.key])

    ids = encode(b.tokenizer, TEXT)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(b.model), str(out)).eval()
    with torch.no_grad():
        stock = peft_model(**ids).logits
        with inject(b.model, weights):
            ours = b.model(**ids).logits
        base = b.model(**ids).logits
    assert (stock - ours).abs().max() <= 1e-5
    assert (stock - base).abs().max() > 1e-3  # the adapter does something


def test_generate_api_dnd_json_seed_and_n_prompts(ckpt, tmp_path):
    dnd = tmp_path / "task.json"
    dnd.write_text(
        json.dumps([{**r, "response": r.get("response", "x"), "system": ""} for r in RECORDS]), encoding="utf-8"
    )
    runtime = RuntimeConfig(device="cpu")
    r1 = generate_adapter(ckpt, dnd, tmp_path / "a1", seed=1, runtime=runtime)
    r2 = generate_adapter(ckpt, dnd, tmp_path / "a1", seed=1, runtime=runtime)  # a previous adapter dir is replaced
    r3 = generate_adapter(ckpt, dnd, tmp_path / "a3", seed=2, runtime=runtime)
    assert r1["condition_sha256"] == r2["condition_sha256"] != r3["condition_sha256"]
    r4 = generate_adapter(
        ckpt, dnd, tmp_path / "a4", n_prompts=7, runtime=runtime
    )  # compact pools any number of prompts
    assert r4["n_prompts"] == 7
    weights, _ = _reference_weights(ckpt, dnd, 7, seed=0)
    saved = load_adapter(tmp_path / "a4")
    assert all(torch.equal(saved.B[k], weights.B[k]) for k in weights.B)
    with pytest.raises(ConfigError, match="positive integer"):
        generate_adapter(ckpt, dnd, tmp_path / "a5", n_prompts=0, runtime=runtime)
    assert not (tmp_path / "a5").exists()


def test_generate_refuses_a_foreign_out_dir_and_a_wrong_encoder(ckpt, prompts, tmp_path, tiny_qwen2):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds other files"):
        generate_adapter(ckpt, prompts, busy)
    assert (busy / "notes.txt").read_text() == "keep me"
    gen = build_generator(
        "compact", derive_layout(tiny_qwen2.arch, SPEC), 384, N_PROMPTS
    )  # trained for a 384-d encoder...
    wrong = save_generator(
        gen, tmp_path / "wrong.safetensors", {"backbone": "tiny-qwen2", "encoder": ENCODER}
    )  # ...saved as tiny's
    with pytest.raises(ConfigError, match="use the encoder the generator was trained with"):
        generate_adapter(wrong, prompts, tmp_path / "w", runtime=RuntimeConfig(device="cpu"))
    assert not (tmp_path / "w").exists()


BAD_PROMPT_FILES = {
    "empty.jsonl": b"",
    "blank.jsonl": b"\n  \n",
    "malformed.jsonl": b'{"prompt": "ok"}\n{"prompt": \n',
    "no_prompt.jsonl": b'{"response": "x"}\n',
    "not_object.jsonl": b'["prompt"]\n',
    "latin1.jsonl": '{"prompt": "caf\u00e9"}\n'.encode("latin-1"),
    "dnd_not_array.json": b'{"prompt": "x", "response": "y"}',
    "dnd_bad.json": b'[{"prompt": "x", "response": "y"},',
}


@pytest.mark.parametrize("name", list(BAD_PROMPT_FILES))
def test_bad_prompt_files_fail_with_one_line_and_write_nothing(ckpt, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_PROMPT_FILES[name])
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["generate", "--generator", str(ckpt), "--prompts", str(path), "--out", str(out)])
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], res.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["gen.safetensors", name])


def test_generate_cli_reports_a_bad_checkpoint_in_one_line(prompts, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--generator",
            str(tmp_path / "missing.safetensors"),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "not found" in res.stderr
    assert not out.exists()
    assert issubclass(GeneratorCheckpointError, DeltaLoraError)
