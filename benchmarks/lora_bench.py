"""What a DEM search trial costs when the fine-tunes are LoRA adapters, searched as adapters (dem/adapter_merge.py).

    make bench                                                # tiny model and SmolLM2-135M (after search_overhead)
    .venv/bin/python benchmarks/lora_bench.py --models tiny   # no extra download
    .venv/bin/python benchmarks/lora_bench.py --threads 1     # on cores other jobs share (see --threads)

For each model: 3 random LoRA adapters of rank --rank (alpha 2r, the harness's default target modules, B non-zero)
and ~1k validation tokens. Interleaved, medians of --repeats (the same forward as search_overhead.py):
  bare        — one validation forward pass of the base model, no adapters;
  adapter_fwd — the same forward through the search's model: the base plus the rank-3r concatenated adapter;
  trial       — one adapter search trial: AdapterSession.set (rescale B's column blocks) + that forward;
  set         — AdapterSession.set alone;
  multi_fwd   — the alternative design: peft multi-adapter, the 3 adapters active at once with their scaling set
                per trial (3 rank-r matmul pairs per module instead of one rank-3r pair);
  dense_trial — the dense search over the adapters' Δ (MergeSession: θ += Σ Δcᵢ Δᵢ) + a bare forward;
  fold_trial  — a third design, measured only here: no adapter in the forward, each trial folds the change into
                the weights, W += B_cat·diag(c′ − c)·A_cat per module (one addmm, no stored Δ) + a bare forward.
trial/adapter_fwd is the issue's goal (≤ 1.05: the adapters' own matmuls are in both); trial/bare says what the
adapters cost against the plain model. trial/adapter_fwd is the median of the ratios of back-to-back runs, the
other ratios are of medians; `min` columns are ratios of the fastest runs, the least disturbed on shared cores.
A trial is exactly set + the adapter forward, so 1+set/adapter_fwd, the set step timed directly, is the same
ratio without the noise of two separate multi-second forwards (as search_overhead.py times its overheads).
Bytes: the 3 adapters' adapter_model.safetensors against the 3 dense fp32 vectors DEM would store instead.
Memory: a fresh process that only loads the base and the adapters and runs trials through AdapterSession (and one
that does the same with the dense vectors through MergeSession): (peak RSS − RSS after imports) ÷ model bytes.
The last line reads `lora trial/adapter_fwd=<x> 1+set/adapter_fwd=<x'> trial/bare=<y> adapter_bytes/vector_bytes=<z>
rss/model=<w>` for the last model.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.search_overhead import BLOCK, built_models, forward, rss_bytes
from dem.adapter_merge import AdapterSession, read_factors
from dem.merge import get_strategy
from dem.search import MergeSession
from dem.vectors import load_vectors, save_vector
from harness.config import LoraSettings
from harness.models import lora
from harness.models.loading import load_model

N_ADAPTERS = 3


def make_adapters(model_dir: Path, work: Path, rank: int) -> list[Path]:
    """3 adapters as a LoRA run saves them: peft's A initialisation, B drawn small and non-zero (a trained B)."""
    settings = LoraSettings()
    folders = []
    for i in range(N_ADAPTERS):
        model = lora.wrap(load_model(model_dir), {"r": rank, "alpha": 2.0 * rank, "dropout": 0.0,
                                                  "target_modules": list(settings.target_modules)})
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(1e-3 * torch.randn(p.shape, generator=g))
        folders.append(work / f"adapter{i}")
        model.save_pretrained(folders[-1])
    return folders


def save_dense(model_dir: Path, folders: list[Path], work: Path) -> tuple[list[Path], list[str]]:
    """The dense vectors DEM stores for these adapters when it densifies them (fp32, the model's dtype)."""
    paths, hashes = [], []
    for i, folder in enumerate(folders):
        paths.append(work / f"vector{i}.safetensors")
        hashes.append(save_vector(lora.dense_vector(load_model(model_dir), folder), paths[-1])["sha256"])
    return paths, hashes


def multi_adapter(model_dir: Path, folders: list[Path]) -> tuple[torch.nn.Module, list[tuple[dict, str, float]]]:
    """peft's own multi-adapter model, every adapter active; returns it and (scaling dict, adapter, sᵢ) per layer
    and adapter, so a trial sets scaling[adapter] = cᵢsᵢ."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = PeftModel.from_pretrained(load_model(model_dir), str(folders[0]), adapter_name="a0")
    for i, folder in enumerate(folders[1:], 1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    model.base_model.set_adapter([f"a{i}" for i in range(len(folders))])
    scalings = [(m.scaling, a, m.scaling[a]) for m in model.modules() if isinstance(m, LoraLayer) for a in m.scaling]
    return model.eval(), scalings


def fold(model_dir: Path, folders: list[Path]) -> tuple[torch.nn.Module, object]:
    """A plain model and a `set(weights)` that moves it to θ₀ + Σ wᵢsᵢBᵢAᵢ by folding each change into the weights
    (in place, so rounding accumulates across trials as in MergeSession)."""
    model, factors, _ = read_factors(load_model(model_dir), folders)
    modules = dict(model.named_modules())
    targets = [(modules[name].weight.data, f.b, f.a, torch.tensor(f.ranks)) for name, f in factors.items()]
    current = [0.0] * len(folders)

    @torch.no_grad()
    def set_weights(weights: list[float]) -> None:
        change = torch.tensor([w - c for w, c in zip(weights, current, strict=True)])
        for weight, b, a, ranks in targets:
            weight.addmm_(b * torch.repeat_interleave(change, ranks), a)
        current[:] = weights

    return model.eval(), set_weights


def rss_probe(model_dir: Path, folders: list[Path], vectors: list[Path], hashes: list[str], x_file: Path,
              trials: int) -> dict:
    """Run in a fresh process: RSS after imports, then load and search; report the peak. With `vectors`, the dense
    search over them (MergeSession) instead of the adapter search."""
    after_imports = rss_bytes()
    model = load_model(model_dir)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    x = torch.load(x_file, weights_only=True)
    strategy = get_strategy("dem")
    session = (MergeSession(model, load_vectors(vectors, hashes), strategy, {}) if vectors
               else AdapterSession(model, folders, strategy, {}))
    rng = random.Random(0)
    for _ in range(trials):
        session.set([rng.random() for _ in range(N_ADAPTERS)], {})
        forward(session.model, x)
    return {"after_imports": after_imports, "peak": rss_bytes("VmHWM"), "model_bytes": model_bytes}


def _probe(model_dir: Path, folders: list[Path], vectors: list[Path], hashes: list[str], x_file: Path) -> float:
    args = [sys.executable, __file__, "--rss-probe", str(model_dir), "--x", str(x_file),
            "--threads", str(torch.get_num_threads()),
            "--adapters", *map(str, folders), "--vectors", *map(str, vectors), "--hashes", *hashes]
    mem = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    return (mem["peak"] - mem["after_imports"]) / mem["model_bytes"]


def bench(name: str, model_dir: Path, work: Path, rank: int, tokens: int, repeats: int) -> dict:
    folders = make_adapters(model_dir, work, rank)
    vectors, hashes = save_dense(model_dir, folders, work)
    g = torch.Generator().manual_seed(0)
    bare = load_model(model_dir)
    x = torch.randint(0, bare.config.vocab_size, (tokens // BLOCK, BLOCK), generator=g)
    torch.save(x, work / "x.pt")
    session = AdapterSession(load_model(model_dir), folders, get_strategy("dem"), {})
    dense = MergeSession(bare, load_vectors(vectors, hashes), get_strategy("dem"), {})  # moves `bare` per trial
    multi, scalings = multi_adapter(model_dir, folders)
    rng = random.Random(0)
    folded, fold_set = fold(model_dir, folders)
    times: dict[str, list[float]] = {k: [] for k in ("bare", "adapter_fwd", "trial", "set", "multi_fwd",
                                                     "dense_trial", "fold_trial")}

    def timed(key: str, fn) -> None:
        t = time.perf_counter()
        fn()
        times[key].append(time.perf_counter() - t)

    def trial() -> None:
        w = [rng.random() for _ in folders]
        t = time.perf_counter()
        session.set(w, {})
        times["set"].append(time.perf_counter() - t)
        forward(session.model, x)
        times["trial"].append(time.perf_counter() - t)

    def multi_trial_forward() -> None:  # set each adapter's scaling (untimed: a dict write), time the forward
        c = [rng.random() for _ in folders]
        for scaling, adapter, s in scalings:
            scaling[adapter] = c[int(adapter[1:])] * s
        timed("multi_fwd", lambda: forward(multi, x))

    def dense_trial() -> None:
        w = [rng.random() for _ in folders]
        timed("dense_trial", lambda: (dense.set(w, {}), forward(bare, x)))

    def fold_trial() -> None:
        w = [rng.random() for _ in folders]
        timed("fold_trial", lambda: (fold_set(w), forward(folded, x)))

    def bare_forward() -> None:
        dense.set([0.0] * len(folders), {})  # back to θ₀ (untimed), so the bare pass is the base model's
        timed("bare", lambda: forward(bare, x))

    steps = [lambda: timed("adapter_fwd", lambda: forward(session.model, x)), trial, trial,
             lambda: timed("adapter_fwd", lambda: forward(session.model, x)), bare_forward, multi_trial_forward,
             dense_trial, fold_trial]
    for step in steps:  # warm-up, not timed
        step()
    for v in times.values():
        v.clear()
    for _ in range(repeats):  # the trial and the adapter forward back to back, both orders (as search_overhead)
        for step in steps:
            step()

    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = zip(times["trial"], times["adapter_fwd"], strict=True)  # back to back, both orders
    adapter_bytes = sum((f / "adapter_model.safetensors").stat().st_size for f in folders)
    vector_bytes = sum(p.stat().st_size for p in vectors)
    return {
        "model": name,
        "params_M": sum(p.numel() for p in bare.parameters()) / 1e6,
        "rank": f"{N_ADAPTERS}x{rank}",
        "tokens": int(x.numel()),
        **{f"{k}_s": v for k, v in med.items()},
        "trial/adapter_fwd": statistics.median(t / f for t, f in pairs),
        "min trial/adapter_fwd": min(times["trial"]) / min(times["adapter_fwd"]),
        "1+set/adapter_fwd": 1 + med["set"] / med["adapter_fwd"],
        "min trial/bare": min(times["trial"]) / min(times["bare"]),
        "trial/bare": med["trial"] / med["bare"],
        "adapter_fwd/bare": med["adapter_fwd"] / med["bare"],
        "multi_fwd/adapter_fwd": med["multi_fwd"] / med["adapter_fwd"],
        "trial/dense_trial": med["trial"] / med["dense_trial"],
        "fold_trial/bare": med["fold_trial"] / med["bare"],
        "adapter_MB": adapter_bytes / 1e6,
        "vector_MB": vector_bytes / 1e6,
        "adapter_bytes/vector_bytes": adapter_bytes / vector_bytes,
        "rss/model": _probe(model_dir, folders, [], [], work / "x.pt"),
        "dense_rss/model": _probe(model_dir, folders, vectors, hashes, work / "x.pt"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1024, help="validation tokens per forward pass")
    parser.add_argument("--rank", type=int, default=16, help="each adapter's rank (the harness's default)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default). On cores busy with other jobs use 1: measured here, "
                             "2 threads on 2 shared cores made a SmolLM2 forward 7x slower and its ratios noise")
    parser.add_argument("--rss-probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapters", nargs="*", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", nargs="*", type=Path, default=[], help=argparse.SUPPRESS)
    parser.add_argument("--hashes", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--x", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe, args.adapters, args.vectors, args.hashes, args.x, args.trials)))
        return
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, folder in built_models(args.models, Path(work)):
            rows.append(bench(name, folder / "model", folder, args.rank, args.tokens, args.repeats))
    cols = ["model", "params_M", "rank", "tokens", "bare_s", "adapter_fwd_s", "set_s", "trial_s", "multi_fwd_s",
            "dense_trial_s", "fold_trial_s", "trial/adapter_fwd", "min trial/adapter_fwd", "1+set/adapter_fwd",
            "trial/bare",
            "min trial/bare", "adapter_fwd/bare",
            "multi_fwd/adapter_fwd", "trial/dense_trial", "fold_trial/bare", "adapter_MB", "vector_MB",
            "rss/model", "dense_rss/model"]
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} (medians)")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(r[c] if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols))
    last = rows[-1]
    print(f"lora trial/adapter_fwd={last['trial/adapter_fwd']:.3f} 1+set/adapter_fwd={last['1+set/adapter_fwd']:.4f} "
          f"trial/bare={last['trial/bare']:.3f} "
          f"adapter_bytes/vector_bytes={last['adapter_bytes/vector_bytes']:.4f} rss/model={last['rss/model']:.2f}")


if __name__ == "__main__":
    main()
