"""GPU check, part 2 (after gpu_check.sh's end-to-end run): on SmolLM2-135M in bf16 on the GPU, measured side by side
in one process:

  * one coefficient-search trial (MergeSession.set + a validation forward pass) against one bare forward pass;
  * training tokens/s through the harness (HF Trainer, harness.runs.trainer.train) against a bare PyTorch loop
    (AdamW, bf16 autocast, grad clipping, the same model, blocks, batch and number of steps).

    .venv/bin/python benchmarks/gpu_check.py                 # on a CUDA machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --steps 2 --tokens 512   # a smoke run of the script
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dem.merge import get_strategy
from dem.search import MergeSession
from harness.evaluation.perplexity import nll
from harness.models.loading import Runtime, convert_smollm2, load_model
from harness.runs.trainer import train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def search_trial_vs_forward(model_dir: Path, rt: Runtime, tokens: int, repeats: int) -> dict[str, float]:
    model = load_model(model_dir, rt)
    g = torch.Generator().manual_seed(0)
    vectors = [{k: (1e-3 * torch.randn(p.shape, generator=g)).to(rt.device, rt.dtype)
                for k, p in model.named_parameters()} for _ in range(3)]
    session = MergeSession(model, vectors, get_strategy("dem"), {})
    x = torch.randint(0, model.config.vocab_size, (tokens // 512, 512), generator=g)
    rng = random.Random(0)
    forward = lambda: nll(model, x, x, batch_size=8)  # noqa: E731
    forward()  # warm-up (kernels, allocator)
    session.set([rng.random() for _ in vectors], {})
    ratios, fwd, trial, set_s = [], [], [], []
    for _ in range(repeats):
        f = timed(forward, rt.device)
        w = [rng.random() for _ in vectors]
        s = timed(lambda w=w: session.set(w, {}), rt.device)
        t = s + timed(forward, rt.device)
        fwd.append(f)
        trial.append(t)
        set_s.append(s)
        ratios.append(t / f)
    return {"forward_s": statistics.median(fwd), "set_s": statistics.median(set_s),
            "trial_s": statistics.median(trial), "trial/forward": statistics.median(ratios)}


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float) -> float:
    """The training step on one screen: forward under bf16 autocast, backward, clip, AdamW step, zero_grad."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    model.train()
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=xb, labels=yb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def trainer_vs_bare(model_dir: Path, rt: Runtime, steps: int, batch_size: int, seq_len: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    vocab = load_model(model_dir, Runtime(torch.device("cpu"), torch.float32)).config.vocab_size
    x = torch.randint(0, vocab, (steps * batch_size, seq_len), generator=g)
    tokens = x.numel()
    record = train(load_model(model_dir, rt), x, x.clone(), batch_size=batch_size, lr=1e-5, warmup_ratio=0.0,
                   weight_decay=0.0, seed=0)
    bare_s = bare_loop(load_model(model_dir, rt), x, x.clone(), batch_size, 1e-5)
    return {"tokens": tokens, "trainer_tok_s": tokens / record["train_wall_s"], "bare_tok_s": tokens / bare_s,
            "trainer/bare": (tokens / record["train_wall_s"]) / (tokens / bare_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=8192, help="validation tokens per forward pass")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each training loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is visible")
    rt = Runtime(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    with tempfile.TemporaryDirectory() as work:
        model_dir = Path(work) / "smollm2"
        convert_smollm2(model_dir)
        search = search_trial_vs_forward(model_dir, rt, args.tokens, args.repeats)
        training = trainer_vs_bare(model_dir, rt, args.steps, args.batch_size, args.seq_len)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} dtype={str(rt.dtype).removeprefix('torch.')} model=SmolLM2-135M")
    print(f"search: forward {search['forward_s']:.4f} s, set {search['set_s']:.4f} s, trial {search['trial_s']:.4f} s "
          f"({args.tokens} tokens, 3 vectors, median of {args.repeats})")
    print(f"training: Trainer {training['trainer_tok_s']:.0f} tok/s, bare loop {training['bare_tok_s']:.0f} tok/s "
          f"({training['tokens']} tokens, batch {args.batch_size} x {args.seq_len})")
    print(f"trial/forward={search['trial/forward']:.3f} trainer/bare={training['trainer/bare']:.3f}")


if __name__ == "__main__":
    main()
