"""The library functions behind the CLI's commands, called directly: the CLI only parses options, calls one of
these and prints what it returns, so what a command does is tested here without a CliRunner."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from deltalora.backbones import architecture_of, backbone_names, load_backbone
from deltalora.backbones.inventory import fetch_backbone, list_backbones
from deltalora.config import LoraSpec
from deltalora.deltas import DeltaError, get_probe_set, probe_set_names
from deltalora.deltas.jobs import analyze_zoo, compute_deltas_for
from deltalora.deltas.listing import probe_sets, zoo_labels
from deltalora.errors import BackboneError, ConfigError
from deltalora.eval.jobs import evaluate_backbone
from deltalora.experiment.jobs import ablate_from_config, run_from_config, train_variant
from deltalora.generators import generator_names
from deltalora.generators.sizes import generator_info
from deltalora.lora import LoraWeights, derive_layout, save_adapter
from deltalora.lora.for_backbone import inspect_adapter_for, layout_for
from deltalora.tasks import TaskError
from deltalora.tasks.overview import fetch_suite, preview_task, suite_rows
from deltalora.training import distributed
from deltalora.zoo import MANIFEST_NAME, ZooEntry, ZooError, append_entry, file_sha256
from deltalora.zoo.summary import import_from_dnd, list_zoo, parse_families, summarize
from tests.helpers import manifest_entry

FIX = Path(__file__).parent / "fixtures"
SUITE = FIX / "tasks" / "suite_small.yaml"


def _adapter(backbone, out: Path, seed: int, targets: str = "q,v") -> Path:
    layout = derive_layout(backbone.arch, LoraSpec(rank=2, alpha=4, targets=targets))
    save_adapter(LoraWeights.random(layout, std=0.3, seed=seed), out)
    return out


@pytest.fixture
def zoo(tiny_qwen2, tmp_path) -> Path:
    """Four adapters of two tasks (families f1, f2) on tiny-qwen2, listed in a manifest out of id order."""
    root = tmp_path / "zoo"
    rows = [("b", "f2", 1, 4), ("a", "f1", 0, 2), ("a", "f1", 0, 4), ("b", "f2", 0, 2)]
    for i, (task, family, seed, step) in enumerate(rows):
        rel = f"{task}/s{seed}/step{step}"
        d = _adapter(tiny_qwen2, root / rel, seed=i)
        append_entry(
            root,
            ZooEntry(
                id=rel,
                task=task,
                family=family,
                seed=seed,
                step=step,
                path=rel,
                sha256=file_sha256(d / "adapter_model.safetensors"),
                backbone="tiny-qwen2",
            ),
        )
    return root


# ------------------------------------------------------------------------------------------- backbones


def test_list_backbones_marks_the_tiny_ones_ready():
    rows = {r["name"]: r for r in list_backbones()}
    assert list(rows) == backbone_names()
    assert rows["tiny-qwen2"]["cached"] and rows["tiny-qwen2"]["kind"] == "tiny"
    assert rows["tiny-qwen2"]["architecture"]["model_type"] == "qwen2"


def test_fetch_backbone_reports_a_load(deltalora_home):
    info = fetch_backbone("tiny-qwen2", progress=False)
    b = load_backbone("tiny-qwen2")
    assert info["already_cached"] and info["weights_id"] == b.weights_id and "marker" not in info
    assert info["parameters"] == sum(p.numel() for p in b.model.parameters())
    with pytest.raises(BackboneError, match="unknown backbone 'nope'"):
        fetch_backbone("nope")


# ------------------------------------------------------------------------------------------------ lora


def test_layout_for_a_backbone_name():
    layout = layout_for("tiny-qwen2", rank=4, alpha=8, targets="q,k,down", layers="1", rslora=True)
    spec = LoraSpec(rank=4, alpha=8, targets="q,k,down", layers=[1], rslora=True)
    assert layout == derive_layout(architecture_of("tiny-qwen2"), spec)
    with pytest.raises(ConfigError, match="^lora options: targets"):
        layout_for("nope-not-a-backbone", targets="q,zz")  # the spec is checked before the backbone is resolved
    with pytest.raises(ConfigError, match=r"LoRA layers \[99\] do not exist"):
        layout_for("tiny-qwen2", layers="99")


def test_inspect_adapter_for_checks_shapes_only_with_a_backbone(tiny_qwen2, tmp_path):
    d = _adapter(tiny_qwen2, tmp_path / "ad", seed=0, targets="q,up")
    assert inspect_adapter_for(d)["valid"] and inspect_adapter_for(d, "tiny-qwen2")["valid"]
    other = inspect_adapter_for(d, "tiny-llama")  # its MLP is narrower: up_proj's shapes differ
    assert not other["valid"] and any("up_proj" in p for p in other["problems"])


# ----------------------------------------------------------------------------------------------- tasks


def test_suite_rows_read_no_data():
    rows = {r["name"]: r for r in suite_rows(SUITE)}
    assert rows["user_mc"] == {
        "name": "user_mc",
        "family": "knowledge",
        "kind": "mc",
        "source": "jsonl",
        "args": rows["user_mc"]["args"],
        "train": 0,
        "condition": 1,
        "eval": 1,
        "group": "user_mc",
    }
    with pytest.raises(ConfigError, match="config file not found"):
        suite_rows(FIX / "nope.yaml")


def test_preview_task_formats_the_first_items():
    task, shown = preview_task("user_short", split="train", n=5, suite=SUITE)
    assert task.name == "user_short" and len(shown) == len(task.split("train")) == 1
    item = task.split("train")[0]
    assert shown[0]["item"] == item.to_dict() and shown[0]["target"] == item.answer
    assert shown[0]["prompt"].endswith("<|im_start|>assistant\n")
    with pytest.raises(TaskError, match="no task named 'missing'"):
        preview_task("missing", suite=SUITE)
    fetch_suite(SUITE)  # local files only: nothing to download, no error


# ------------------------------------------------------------------------------------------------- zoo


def test_summarize_counts_per_task_and_family(zoo):
    s = list_zoo(zoo, verify=True)
    assert s["adapters"] == 4 and s["families"] == {"f1": 2, "f2": 2}
    rows = [(t["task"], t["adapters"], t["seeds"], t["steps"]) for t in s["tasks"]]
    assert rows == [("a", 2, [0], [2, 4]), ("b", 2, [0, 1], [2, 4])]
    assert [t["seconds_per_run"] for t in s["tasks"]] == [None, None] and s["train_seconds"] == 0  # none recorded
    assert summarize([]) == {"adapters": 0, "tasks": [], "families": {}, "train_seconds": 0}
    with pytest.raises(ZooError, match="zoo manifest not found"):
        list_zoo(zoo / "nope")


def test_summary_gives_each_tasks_teacher_cost_per_run_not_per_checkpoint():
    def entry(task, seed, step, seconds):
        return manifest_entry(task, seed, step, extra=None if seconds is None else {"train_seconds": seconds})

    s = summarize(
        [entry("a", 0, st, 100.0) for st in (10, 20, 30)]  # one run, three checkpoints: counted once
        + [entry("a", 1, st, 140.0) for st in (10, 20, 30)]
        + [entry("a", 2, 30, 300.0)]
        + [entry("b", 0, 30, None)]  # imported: no time recorded
    )
    assert [(t["task"], t["seconds_per_run"]) for t in s["tasks"]] == [("a", 140.0), ("b", None)]
    assert s["train_seconds"] == 540.0


def test_dnd_families_are_parsed_before_anything_is_read(tmp_path):
    assert parse_families(["a=b", "c=d=e"]) == {"a": "b", "c": "d=e"}
    with pytest.raises(ConfigError, match="--family 'bad': expected DATASET=FAMILY"):
        import_from_dnd(tmp_path / "missing", tmp_path / "out", families=["bad"])


# ---------------------------------------------------------------------------------------------- deltas


def test_probe_sets_one_or_all():
    assert [p.name for p in probe_sets()] == probe_set_names()
    assert probe_sets("generic5") == [get_probe_set("generic5")]


def test_zoo_labels_follow_the_given_ids(zoo):
    ids = ["b/s0/step2", "a/s0/step2", "b/s1/step4"]
    labels = zoo_labels(zoo / MANIFEST_NAME, ids)
    assert labels.families == ["f2", "f1", "f2"]
    assert labels.dirs == [zoo / i for i in ids]
    assert labels.runs == [("b", "b/s0", 2), ("a", "a/s0", 2), ("b", "b/s1", 4)]
    with pytest.raises(KeyError):
        zoo_labels(zoo, ["not/in/zoo"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "pass exactly one of --zoo"),
        ({"zoo": "z", "adapters": ["a"]}, "pass exactly one of --zoo"),
        ({"adapters": ["a"], "backend": "spark"}, "--backend 'spark' is not one of local, ray"),
        ({"adapters": ["a"], "shard": "2/2"}, "--shard '2/2' is not i/n"),
        ({"adapters": ["a"], "dtype": "fp64"}, "--device/--dtype: dtype"),
    ],
)
def test_compute_deltas_for_checks_options_before_loading(kwargs, match):
    with pytest.raises(ConfigError if "shard" in kwargs or "dtype" in kwargs else DeltaError, match=match):
        compute_deltas_for("nope-never-loaded", **kwargs)


def test_compute_deltas_for_a_zoo_or_adapters(zoo, tmp_path):
    report = compute_deltas_for("tiny-qwen2", zoo=zoo, cache=tmp_path / "c", device="cpu", progress=False)
    assert report.counts() == {"computed": 4, "cached": 0, "broken": 0} and report.probes == "generic5"
    again = compute_deltas_for("tiny-qwen2", adapters=[zoo / "a/s0/step2"], cache=tmp_path / "c", progress=False)
    assert again.counts() == {"computed": 0, "cached": 1, "broken": 0}  # the same content, whatever its id
    half = compute_deltas_for("tiny-qwen2", zoo=zoo, shard="1/2", cache=tmp_path / "c", progress=False)
    assert half.counts()["cached"] == 2


def test_analyze_zoo_labels_rows_from_the_manifest(zoo, tmp_path):
    out = analyze_zoo("tiny-qwen2", zoo, cache=tmp_path / "c", weights=False, progress=False)
    assert out["backbone"] == "tiny-qwen2" and out["broken"] == [] and out["adapters"] == 4
    assert set(out["families"]) == {"f1", "f2"} and "silhouette_weights" not in out


# ------------------------------------------------------------------------------------------ generators


def test_generator_info_on_a_backbone_name():
    info = generator_info("tiny-qwen2", ["compact"], rank=4, targets="q,v", cond_dim=16, n_prompts=3)
    layout = layout_for("tiny-qwen2", rank=4, targets="q,v")
    assert info["lora_params"] == layout.num_params and info["num_slots"] == len(layout.slots)
    assert info["lora"] == layout.spec.model_dump(mode="json") and list(info["generators"]) == ["compact"]
    both = generator_info("tiny-qwen2", ["hyperconv", "compact"], rank=4, targets="q,v", cond_dim=16, n_prompts=3)
    compact, hyper = both["generators"]["compact"], both["generators"]["hyperconv"]
    assert compact == info["generators"]["compact"] and hyper["ratio_to_hyperconv"] == 1.0
    assert compact["ratio_to_hyperconv"] == compact["num_parameters"] / hyper["num_parameters"]
    assert set(generator_info("tiny-qwen2")["generators"]) == set(generator_names())
    with pytest.raises(ConfigError, match="unknown generator 'nope'"):
        generator_info("tiny-qwen2", ["nope"])


# ------------------------------------------------------------------------------------------------ eval


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "x", "backend": "harness"}, "--backend 'harness': use native or lm-eval"),
        ({"data": "x.jsonl", "backend": "lm-eval"}, "pass --task NAME"),
        ({}, "pass exactly one of --task NAME or --data FILE"),
        ({"task": "x", "data": "x.jsonl"}, "pass exactly one of --task NAME or --data FILE"),
        ({"task": "x", "precision": "fp64"}, "--precision: "),
        ({"task": "x", "num_fewshot": 2}, "belong to --backend lm-eval"),
    ],
)
def test_evaluate_backbone_checks_options_before_loading(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        evaluate_backbone("nope-never-loaded", **kwargs)


def test_evaluate_backbone_on_a_data_file(tiny_qwen2, tmp_path):
    d = _adapter(tiny_qwen2, tmp_path / "ad", seed=0)
    res = evaluate_backbone("tiny-qwen2", [d], data=FIX / "tasks" / "mc.jsonl", limit=2, device="cpu", progress=False)
    assert res["backbone"] == "tiny-qwen2" and res["split"] == "eval"
    assert list(res["arms"]) == ["base", str(d)] and all(r["n"] == 2 for r in res["arms"].values())


# ------------------------------------------------------------------------------------------ experiment


def test_experiment_jobs_check_their_options_first(tmp_path):
    # the arms are the config's (weight_only, delta and its compare: names): checked once it is read, before any work
    with pytest.raises(ConfigError, match="--arm 'bad': use one of weight_only, delta, mixture$"):
        train_variant(FIX / "run" / "tiny.yaml", tmp_path / "out", "bad")
    with pytest.raises(ConfigError, match="--set 'nokey'"):
        train_variant(FIX / "run" / "tiny.yaml", tmp_path / "out", overrides=["nokey"])
    with pytest.raises(ConfigError, match="invalid config: train.nope"):
        run_from_config(FIX / "run" / "tiny.yaml", tmp_path / "run", overrides=["train.nope=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        ablate_from_config(tmp_path / "missing.yaml", tmp_path / "ablate")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------- distributed


def test_distributed_is_a_no_op_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.init_distributed()
    assert not distributed.is_distributed() and distributed.rank() == 0
    distributed.barrier()
    distributed.leave_distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.init_distributed()
    assert not distributed.is_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_like_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """What torchrun gives each process: the environment, nothing else (no GPU: gloo on CPU)."""
    os.environ.update(
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CUDA_VISIBLE_DEVICES="",
    )
    distributed.init_distributed()
    distributed.init_distributed()  # joining twice is a no-op
    try:
        me = distributed.rank()
        if me == 0:
            Path(root, "prepared").write_text("rank 0 was here")
        distributed.barrier()  # the other ranks see what rank 0 wrote before the barrier
        seen = Path(root, "prepared").read_text()
        Path(root, f"rank{me}.json").write_text(
            json.dumps(
                {
                    "rank": me,
                    "in_group": distributed.is_distributed(),
                    "backend": torch.distributed.get_backend(),
                    "seen": seen,
                }
            )
        )
    finally:
        distributed.leave_distributed()
    assert not distributed.is_distributed()


def test_distributed_joins_and_leaves_a_gloo_group(tmp_path):
    mp.spawn(_torchrun_like_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got == [{"rank": r, "in_group": True, "backend": "gloo", "seen": "rank 0 was here"} for r in (0, 1)]
