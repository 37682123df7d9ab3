import pytest

from deltalora.config import LoraSpec
from deltalora.lora import LoraWeights, derive_layout, save_adapter
from deltalora.zoo import ZooEntry, ZooError, append_entry, file_sha256, read_manifest


def _entry(zoo, tiny_qwen2, i, task="t"):
    path = f"{task}/s{i}"
    w = LoraWeights.random(derive_layout(tiny_qwen2.arch, LoraSpec(rank=4, targets="q,v")), seed=i)
    save_adapter(w, zoo / path)
    return ZooEntry(
        id=path,
        task=task,
        family="math",
        seed=i,
        path=path,
        sha256=file_sha256(zoo / path / "adapter_model.safetensors"),
    )


def test_round_trip_and_verify(tmp_path, tiny_qwen2):
    zoo = tmp_path / "zoo"
    entries = [_entry(zoo, tiny_qwen2, i) for i in range(3)]
    for e in entries:
        append_entry(zoo, e)
    assert read_manifest(zoo, verify=True) == entries
    (zoo / "t/s1/adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ZooError, match="differ from the manifest"):
        read_manifest(zoo, verify=True)


def test_partial_last_line_ignored_but_bad_middle_line_is_an_error(tmp_path, tiny_qwen2):
    zoo = tmp_path / "zoo"
    append_entry(zoo, _entry(zoo, tiny_qwen2, 0))
    with open(zoo / "manifest.jsonl", "a") as fh:
        fh.write('{"id": "t/s1", "task"')  # killed mid-write
    assert [e.id for e in read_manifest(zoo)] == ["t/s0"]
    with open(zoo / "manifest.jsonl", "a") as fh:
        fh.write("\n")
    append_entry(zoo, _entry(zoo, tiny_qwen2, 2))
    with pytest.raises(ZooError, match=r"manifest.jsonl:2: not valid JSON"):
        read_manifest(zoo)


def test_duplicates_and_missing(tmp_path, tiny_qwen2):
    zoo = tmp_path / "zoo"
    with pytest.raises(ZooError, match="zoo manifest not found"):
        read_manifest(zoo)
    e = _entry(zoo, tiny_qwen2, 0)
    append_entry(zoo, e)
    append_entry(zoo, e)
    with pytest.raises(ZooError, match="duplicate adapter id"):
        read_manifest(zoo)
