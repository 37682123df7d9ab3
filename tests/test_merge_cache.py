"""The study merge cache: a dense merge is computed once, read back bit-identical (so the eval cache's content keys
still match), missed on any change of inputs or options, and re-merged when its entry is unreadable."""

import pytest

from deltalora.config import LoraSpec
from deltalora.experiment.merge_cache import MERGE_OPTIONS, MergeCache
from deltalora.lora import LoraWeights, derive_layout, weights_hash
from deltalora.lora.merge import merge_adapters

SPEC = LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj", "up_proj"))


@pytest.fixture
def three(tiny_qwen2):
    layout = derive_layout(tiny_qwen2.arch, SPEC)
    return [LoraWeights.random(layout, std=0.2, seed=s) for s in range(3)]


@pytest.fixture
def counted(monkeypatch):
    """Counts the merges MergeCache computes (the cache calls merge_adapters by its module-level name)."""
    from deltalora.experiment import merge_cache

    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("method", args[2] if len(args) > 2 else "avg"))
        return merge_adapters(*args, **kwargs)

    monkeypatch.setattr(merge_cache, "merge_adapters", counting)
    return calls


def test_a_dense_merge_is_computed_once_and_read_back_identical(three, tmp_path, counted):
    cache = MergeCache(tmp_path / "merges")
    first = cache.merge(three, [1, 2, 3], "ties", names=["a", "b", "c"], seed=1)
    again = MergeCache(tmp_path / "merges").merge(three, [1, 2, 3], "ties", names=["a", "b", "c"], seed=1)
    assert counted == ["ties"] and len(list((tmp_path / "merges").iterdir())) == 1
    assert again.layout.signature == first.layout.signature and weights_hash(again) == weights_hash(first)
    fresh = merge_adapters(three, [1, 2, 3], "ties", seed=1)
    assert weights_hash(first) == weights_hash(fresh)  # what the eval cache keys a candidate's score by


def test_any_change_of_inputs_or_options_misses(three, tmp_path, counted):
    cache = MergeCache(tmp_path / "merges")
    cache.merge(three, None, "ties")
    cache.merge(three, None, "ties", density=MERGE_OPTIONS["density"])  # an option given at its default: a hit
    assert len(counted) == 1
    cache.merge(three, None, "ties", density=0.3)
    cache.merge(three, [1, 1, 2], "ties")
    cache.merge(three[:2], None, "ties")
    cache.merge(three, None, "dare_ties", seed=0)
    cache.merge(three, None, "dare_ties", seed=1)
    other = [LoraWeights(w.layout, w.A, {k: v * 1.01 for k, v in w.B.items()}) for w in three]
    cache.merge(other, None, "ties")
    assert len(counted) == 7 and len(list((tmp_path / "merges").iterdir())) == 7
    with pytest.raises(TypeError, match="unknown merge option"):
        cache.merge(three, None, "ties", densty=0.3)


def test_factor_merges_are_not_stored(three, tmp_path):
    cache = MergeCache(tmp_path / "merges")
    for method in ("avg", "svd"):
        w = cache.merge(three, None, method)
        assert weights_hash(w) == weights_hash(merge_adapters(three, None, method))
    assert not (tmp_path / "merges").exists()


def test_an_unreadable_entry_is_merged_again(three, tmp_path, counted):
    cache = MergeCache(tmp_path / "merges")
    first = cache.merge(three, None, "ties")
    (entry,) = (tmp_path / "merges").iterdir()
    (entry / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    again = cache.merge(three, None, "ties")
    assert counted == ["ties", "ties"] and weights_hash(again) == weights_hash(first)
    assert cache.merge(three, None, "ties") is not None and counted == ["ties", "ties"]  # the entry was replaced


def test_the_keyed_options_are_merge_adapters_own():
    """MERGE_OPTIONS is read off merge_adapters' signature (a new option there joins the key)."""
    assert MERGE_OPTIONS == {"rank": None, "density": 0.5, "majority_sign": "total", "seed": 0}
