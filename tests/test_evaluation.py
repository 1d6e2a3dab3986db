"""lm-eval bridge: stock tasks through the hub mirror, every metric kept, per-sample logs, parity with lm-eval."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf

from harness.config import CONF_DIR
from harness.data.builtin import bbh_object_counting, generate_splits
from harness.data.mirror import MirrorError, hub_mirror
from harness.errors import ConfigError
from harness.evaluation import perturb as pt
from harness.evaluation import tasks as tasks_module
from harness.evaluation.checks import check_eval, check_mirror, mirror_fingerprint, task_datasets
from harness.evaluation.helm import add_calibration, perturbed_prompts
from harness.evaluation.results import flat_scores
from harness.evaluation.runner import evaluate
from harness.evaluation.tasks import TASK_VERSION, EvalConfigError, resolve_tasks, stock_manager, write_tasks
from harness.stats import intervals as stats
from tests.fixtures_hub import write_mirror

# The stock tasks under test: metrics each reports, and its YAML's metadata.version (lm-eval 0.4.13).
STOCK = {
    "mmlu_abstract_algebra": ({"acc"}, 1.0),
    "bbh_fewshot_boolean_expressions": ({"exact_match"}, 2.0),
    "mathqa": ({"acc", "acc_norm"}, 1.0),
    "boolq": ({"acc"}, 2.0),
    "openbookqa": ({"acc", "acc_norm"}, 1.0),
    "truthfulqa_mc1": ({"acc"}, 2.0),
}
MC = {t for t, (metrics, _) in STOCK.items() if "acc" in metrics}  # multiple choice: HELM-style metrics too
LIMIT = 2
SHORT = {"max_gen_toks": 4}


def helm_metrics(metrics: set[str]) -> set[str]:
    """What `evaluate(robustness=True)` adds to a multiple-choice task's metrics."""
    return {"ece", "robustness_drop"} | {f"{m}_robust" for m in metrics}


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stock_manager()  # lm-eval's task index: built once for the module (8-15 s)
    return write_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture(scope="module")
def stock_run(micro_base, mirror_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One evaluation of every stock task under test, shared by the tests that inspect it."""
    from harness.models.loading import load_model, load_tokenizer

    samples = tmp_path_factory.mktemp("samples")
    result = evaluate(load_model(micro_base[0]), load_tokenizer(micro_base[0]), tasks=list(STOCK), limit=LIMIT,
                      batch_size=4, gen_kwargs=OmegaConf.create(SHORT), samples_dir=samples, mirror=mirror_root,
                      robustness=True)
    return result, samples


def test_every_stock_task_keeps_all_metrics_stderr_and_version(stock_run):
    result, _ = stock_run
    assert set(result) == set(STOCK)
    for task, (metrics, version) in STOCK.items():
        res = result[task]
        everything = metrics | helm_metrics(metrics) if task in MC else metrics
        assert set(res["metrics"]) == everything and set(res["stderr"]) == everything, task
        assert all(isinstance(v, float) for v in res["metrics"].values()), task
        assert all(isinstance(res["stderr"][m], float) for m in metrics), task
        assert (res["version"], res["n"], res["group"], res["subtasks"]) == (version, LIMIT, False, [])
    assert result["bbh_fewshot_boolean_expressions"]["num_fewshot"] == 3  # the YAML's default
    assert result["mmlu_abstract_algebra"]["num_fewshot"] == 0
    flat = flat_scores(result)
    assert {"mathqa/acc", "mathqa/acc_stderr", "mathqa/acc_norm", "mathqa/acc_norm_stderr",
            "bbh_fewshot_boolean_expressions/exact_match"} <= set(flat)
    stderrs = {f"{t}/{m}{s}" for t, (metrics, _) in STOCK.items() for m in metrics for s in ("", "_stderr")}
    robust = {f"{t}/{m}_robust{s}" for t in MC for m in STOCK[t][0] for s in ("", "_stderr")}
    assert set(flat) == stderrs | robust | {f"{t}/{m}" for t in MC for m in ("ece", "robustness_drop")}


def test_per_sample_records_for_paired_statistics(stock_run):
    result, samples = stock_run
    for task, (metrics, _) in STOCK.items():
        rows = [json.loads(line) for line in (samples / f"{task}.jsonl").read_text().splitlines()]
        assert [r["doc_id"] for r in rows] == list(range(LIMIT)), task
        assert all(metrics <= set(r) and "target" in r and "resps" in r for r in rows), task
        mean = sum(r[sorted(metrics)[0]] for r in rows) / len(rows)
        assert mean == pytest.approx(result[task]["metrics"][sorted(metrics)[0]]), task
    mc = json.loads((samples / "openbookqa.jsonl").read_text().splitlines()[0])
    assert len(mc["filtered_resps"]) == 4  # one log-likelihood per choice


def test_helm_metrics_for_stock_multiple_choice_tasks(stock_run):
    """Stock MC tasks: `ece` equals the value recomputed from the per-sample JSONL; `acc_robust` is the mean of the
    perturbed pass's records, whose prompts differ from the unperturbed ones for the same docs and targets."""
    result, samples = stock_run
    for task in MC:
        metrics = result[task]["metrics"]
        assert metrics["ece"] == recomputed_ece(samples / f"{task}.jsonl"), task
        plain, robust = read_jsonl(samples / f"{task}.jsonl"), read_jsonl(samples / f"{task}__robust.jsonl")
        assert [r["doc_hash"] for r in robust] == [r["doc_hash"] for r in plain], task
        assert [r["target_hash"] for r in robust] == [r["target_hash"] for r in plain], task
        assert all(a["prompt_hash"] != b["prompt_hash"] for a, b in zip(plain, robust, strict=True)), task
        assert metrics["acc_robust"] == pytest.approx(sum(r["acc"] for r in robust) / LIMIT), task
        assert metrics["robustness_drop"] == pytest.approx(metrics["acc"] - metrics["acc_robust"]), task
    assert not (samples / "bbh_fewshot_boolean_expressions__robust.jsonl").exists()  # generation: no ece, no robust


def test_generation_task_uses_gen_kwargs(stock_run, tokenizer):
    _, samples = stock_run
    rows = [json.loads(line) for line in (samples / "bbh_fewshot_boolean_expressions.jsonl").read_text().splitlines()]
    for row in rows:
        generated = row["resps"][0][0]
        assert isinstance(generated, str) and len(tokenizer(generated).input_ids) <= SHORT["max_gen_toks"]


def test_parity_with_lm_eval_on_the_saved_checkpoint(base_model, tokenizer, mirror_root: Path, tmp_path: Path):
    """The harness's in-memory path and `lm_eval.simple_evaluate(model="hf")` on the saved folder agree exactly:
    every metric and stderr, and every per-sample log-likelihood and generation."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    tasks = ["mmlu_abstract_algebra", "boolq", "mathqa", "bbh_fewshot_boolean_expressions"]
    base_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    ours = evaluate(base_model, tokenizer, tasks=tasks, limit=3, batch_size=4, gen_kwargs=SHORT,
                    mirror=mirror_root, samples_dir=tmp_path / "samples", bootstrap_iters=1000)
    with hub_mirror(mirror_root):
        direct = simple_evaluate(model="hf", model_args={"pretrained": str(tmp_path / "model"), "dtype": "float32"},
                                 tasks=tasks, limit=3, batch_size=4, device="cpu", gen_kwargs=SHORT,
                                 bootstrap_iters=1000, log_samples=True)
    for task in tasks:
        theirs = {k: v for k, v in direct["results"][task].items() if "," in k}
        extra = {"ece"} if "acc" in ours[task]["metrics"] else set()  # ours only: calibration, free for MC tasks
        assert set(ours[task]["metrics"]) - {m.partition(",")[0] for m in theirs} == extra, task
        mine = {lm_eval_key(m): v for m, v in ours[task]["metrics"].items() if m not in extra}
        mine |= {lm_eval_key(m, "_stderr"): v for m, v in ours[task]["stderr"].items() if m not in extra}
        assert mine == theirs, task
        logged = [json.loads(line)["filtered_resps"] for line in (tmp_path / "samples" / f"{task}.jsonl").open()]
        expected = json.loads(json.dumps([s["filtered_resps"] for s in direct["samples"][task]],
                                         default=handle_non_serializable))
        assert logged == expected, task


def lm_eval_key(name: str, suffix: str = "") -> str:
    """Our metric name back to lm-eval's result key: `acc` → `acc,none`, `em,get-answer` → `em_stderr,get-answer`."""
    metric, _, filt = name.partition(",")
    return f"{metric}{suffix},{filt or 'none'}"


def test_group_kept_as_group_and_per_subtask(base_model, tokenizer, mirror_root: Path):
    result = evaluate(base_model, tokenizer, tasks=["bbh_fewshot"], num_fewshot={"bbh_fewshot": 1}, limit=1,
                      batch_size=8, gen_kwargs={"max_gen_toks": 2}, mirror=mirror_root)
    group = result["bbh_fewshot"]
    assert group["group"] and len(group["subtasks"]) == 27 and set(result) == {"bbh_fewshot", *group["subtasks"]}
    assert (group["n"], group["num_fewshot"], group["version"]) == (27, 1, 3.0)
    assert set(group["metrics"]) == {"exact_match"}
    assert all(result[t]["num_fewshot"] == 1 for t in group["subtasks"])
    assert "bbh_fewshot/exact_match" in flat_scores(result)


def test_num_fewshot_int_and_a_yaml_pinned_zero(base_model, tokenizer, mirror_root: Path):
    result = evaluate(base_model, tokenizer, tasks=["mmlu_abstract_algebra", "truthfulqa_mc1"], num_fewshot=2,
                      limit=1, batch_size=8, mirror=mirror_root)
    assert result["mmlu_abstract_algebra"]["num_fewshot"] == 2
    assert result["truthfulqa_mc1"]["num_fewshot"] == 0  # its YAML pins 0 shots; lm-eval keeps it


def test_num_fewshot_checked_before_training(mirror_root: Path):
    check = check_eval  # what the pipeline calls before any training
    assert check(["mathqa_mc", "mmlu"], {"mmlu_stem": 5, "mmlu_anatomy": 2, "mathqa_mc": 1}).stock == ("mmlu",)
    with pytest.raises(EvalConfigError, match=r"^eval\.num_fewshot: mmlu not among eval\.tasks or their subtasks$"):
        check(["mathqa"], {"mmlu": 5})
    with pytest.raises(EvalConfigError, match=r"eval\.num_fewshot: mathqa=-1 must be an int >= 0"):
        check(["mathqa"], {"mathqa": -1})
    with pytest.raises(EvalConfigError, match=r"eval\.num_fewshot=five"):
        check(["mathqa"], "five")
    with pytest.raises(MirrorError, match="regisss/math_qa"):
        check(["mathqa"], None, mirror_root / "cais")


def test_unknown_task_says_did_you_mean(mirror_root: Path):
    with pytest.raises(EvalConfigError) as err:
        resolve_tasks(["mathqa_mc", "mmlu_abstrct_algebra"])
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, ConfigError)
    assert message.startswith("eval.tasks: unknown lm-eval task 'mmlu_abstrct_algebra'. Did you mean "
                              "'mmlu_abstract_algebra'")


def test_overlapping_and_repeated_names_fail_before_loading(mirror_root: Path):
    with pytest.raises(EvalConfigError, match="'mmlu' and 'mmlu_anatomy' both run 'mmlu_anatomy'"):
        resolve_tasks(["mmlu", "mmlu_anatomy"])
    with pytest.raises(EvalConfigError, match="'boolq' is listed twice"):
        resolve_tasks(["boolq", "boolq"])


def test_task_datasets_lists_every_split_read(mirror_root: Path):
    found = {(d.path, d.name): d.splits for d in task_datasets(["mmlu", "bbh_fewshot", "drop", "mathqa", "boolq",
                                                                     "hellaswag", "openbookqa", "truthfulqa_mc1"])}
    assert found[("cais/mmlu", "abstract_algebra")] == ("test", "dev")
    assert len([k for k in found if k[0] == "cais/mmlu"]) == 57
    assert found[("SaylorTwift/bbh", "boolean_expressions")] == ("test",)  # few-shot exemplars are in the YAML
    assert found[("regisss/math_qa", None)] == ("test", "train")  # lm-eval builds few-shot docs from train
    assert found[("aps/super_glue", "boolq")] == ("validation", "train")
    assert found[("allenai/openbookqa", "main")] == ("test", "train")
    assert found[("truthfulqa/truthful_qa", "multiple_choice")] == ("validation",)
    assert found[("EleutherAI/drop", None)] == ("validation", "train")
    assert found[("Rowan/hellaswag", None)] == ("validation", "train")


def test_one_config_read_two_ways_cannot_be_mirrored(mirror_root: Path):
    """mmlusr's subjects read different CSVs (data_files) of one hub config: a mirror has one copy per config."""
    (only,) = task_datasets(["mmlusr_answer_only_abstract_algebra"])
    assert only.load_kwargs["data_files"]["test"] == "answer_only_test/answer_only_abstract_algebra_test.csv"
    with pytest.raises(MirrorError, match="with different dataset_kwargs"):
        task_datasets(["mmlusr_answer_only_abstract_algebra", "mmlusr_answer_only_anatomy"])


def test_mirror_missing_a_split_is_one_line_naming_the_file(mirror_root: Path, tmp_path: Path, base_model,
                                                            tokenizer):
    root = tmp_path / "mirror"
    shutil.copytree(mirror_root, root)
    (root / "cais/mmlu/abstract_algebra/dev.jsonl").unlink()
    expected = re.escape(str(root / "cais/mmlu/abstract_algebra/dev.jsonl"))
    with pytest.raises(MirrorError, match=expected) as err:
        check_mirror(["mathqa_mc", "mmlu_abstract_algebra", "boolq"], root)
    assert "\n" not in str(err.value) and "needed by task mmlu_abstract_algebra" in str(err.value)
    with pytest.raises(MirrorError, match=expected):  # and at evaluation time, should the check be skipped
        evaluate(base_model, tokenizer, tasks=["mmlu_abstract_algebra"], limit=1, mirror=root)
    check_mirror(list(STOCK), mirror_root)


def test_mirror_missing_many_files_counts_them(mirror_root: Path):
    with pytest.raises(MirrorError, match=r"cais/mmlu/anatomy/test\.jsonl .* \(and 111 more missing\)$"):
        check_mirror(["mmlu"], mirror_root)


def test_builtin_tasks_score_as_before(base_model, tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Built-in tasks: same scores as lm-eval reading the YAML folder itself, with robustness on too; `<task>/acc`
    keys; no stock index."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    test_sets = {"mathqa_mc": generate_splits("mathqa", 0, 4, 1, 6).test,
                 "bbh_object_counting": bbh_object_counting(0, 6)}
    write_tasks(tmp_path, test_sets)
    monkeypatch.setattr(tasks_module, "stock_manager",
                        lambda: pytest.fail("built-in tasks alone must not index lm-eval"))
    monkeypatch.setattr(tasks_module, "stock_index", lambda: pytest.fail("built-in tasks alone must not index lm-eval"))
    result = evaluate(base_model, tokenizer, tasks=list(test_sets), task_dir=tmp_path, limit=5, batch_size=8,
                      robustness=True, samples_dir=tmp_path / "samples")
    lm = HFLM(pretrained=base_model, tokenizer=tokenizer, batch_size=8, device="cpu")
    old = simple_evaluate(model=lm, tasks=list(test_sets), limit=5, bootstrap_iters=1000,
                          task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    flat = flat_scores(result)
    assert {k: v for k, v in flat.items() if k.endswith(("/acc", "/acc_stderr"))} == {
        f"{t}/{m}": old["results"][t][f"{m},none"] for t in test_sets for m in ("acc", "acc_stderr")}
    assert set(flat) == {f"{t}/{m}" for t in test_sets for m in ("acc", "acc_stderr", "ece", "acc_robust",
                                                                 "acc_robust_stderr", "robustness_drop")}
    assert all(result[t]["version"] == TASK_VERSION and result[t]["n"] == 5 for t in test_sets)
    for task in test_sets:
        assert result[task]["metrics"]["ece"] == recomputed_ece(tmp_path / "samples" / f"{task}.jsonl")
        robust = read_jsonl(tmp_path / "samples" / f"{task}__robust.jsonl")
        assert result[task]["metrics"]["acc_robust"] == pytest.approx(sum(r["acc"] for r in robust) / 5)
        drop = flat[f"{task}/acc"] - flat[f"{task}/acc_robust"]
        assert result[task]["metrics"]["robustness_drop"] == pytest.approx(drop)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recomputed_ece(path: Path) -> float:
    """ECE from a per-sample JSONL alone: raw choice log-likelihoods and the target index, via stats.intervals."""
    rows = read_jsonl(path)
    confidence, correct = stats.choice_confidence([[r[0] for r in row["filtered_resps"]] for row in rows],
                                                  [row["target"] for row in rows])
    return stats.expected_calibration_error(confidence, correct, n_bins=10)


def test_every_model_reads_the_same_perturbed_prompts(base_model, tokenizer, tmp_path: Path):
    """Perturbations depend on (seed, prompt) only: a different model sees byte-identical perturbed prompts (same
    prompt hashes), which differ from the unperturbed ones; the choices and targets are left alone."""
    import torch

    write_tasks(tmp_path / "tasks", {"sni_mc": generate_splits("sni", 0, 4, 1, 4).test})
    other = type(base_model)(base_model.config).eval()
    torch.manual_seed(0)
    other.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in base_model.state_dict().items()})
    runs = []
    for i, model in enumerate([base_model, other]):
        evaluate(model, tokenizer, tasks=["sni_mc"], task_dir=tmp_path / "tasks", batch_size=8, robustness=True,
                 samples_dir=tmp_path / f"s{i}")
        runs.append((read_jsonl(tmp_path / f"s{i}/sni_mc.jsonl"), read_jsonl(tmp_path / f"s{i}/sni_mc__robust.jsonl")))
    (plain_a, robust_a), (_, robust_b) = runs
    assert [r["prompt_hash"] for r in robust_a] == [r["prompt_hash"] for r in robust_b]
    assert [r["perturbed_text"] for r in robust_a] == [r["perturbed_text"] for r in robust_b]
    assert robust_a[0]["filtered_resps"] != robust_b[0]["filtered_resps"]  # two models indeed
    for plain, robust in zip(plain_a, robust_a, strict=True):
        assert robust["prompt_hash"] != plain["prompt_hash"] and robust["doc"] == plain["doc"]
        assert robust["perturbed_text"] == pt.perturb(plain["doc"]["context"], 0) != plain["doc"]["context"]
        assert (robust["target_hash"], len(robust["filtered_resps"])) == (plain["target_hash"],
                                                                          len(plain["doc"]["choices"]))


def test_perturbation_reaches_the_test_doc_only(mirror_root: Path):
    """lm-eval's requests for a 2-shot MC task: under `perturbed_prompts` the context is the same exemplars followed
    by the perturbed test question, the continuations (choices) are unchanged, and unwrapping restores the original."""
    with hub_mirror(mirror_root):
        task = stock_manager().load(["mmlu_abstract_algebra"])["tasks"]["mmlu_abstract_algebra"]
    task.set_config(key="num_fewshot", value=2)

    def requests() -> list[tuple[str, str]]:
        task.set_fewshot_seed(1234)
        task.build_all_requests(limit=2)
        return [inst.args for inst in task.instances]

    before = requests()
    with perturbed_prompts([task], seed=0, kinds=pt.KINDS):
        during = requests()
    assert requests() == before
    docs = list(task.test_docs())[:2]
    assert len(before) == len(during) == 8  # 2 docs x 4 choices
    for (ctx, cont), (pctx, pcont), doc in zip(before, during, [d for d in docs for _ in range(4)], strict=True):
        text = task.doc_to_text(doc)
        exemplars = ctx.removesuffix(text)
        assert cont == pcont and exemplars != ctx and exemplars.count("Answer:") == 2
        assert pctx == exemplars + pt.perturb(text, 0) != ctx


def fake_mc_task(name: str) -> SimpleNamespace:
    return SimpleNamespace(task_name=name, OUTPUT_TYPE="multiple_choice", multiple_input=0)


def record(lls: list[float], target: int, acc: float) -> dict:
    return {"filtered_resps": [[ll, False] for ll in lls], "target": target, "acc": acc, "filter": "none"}


def test_ece_by_hand_and_pooled_over_a_group():
    """Confidences 0.5 (right), 0.75 (wrong), 0.65 (right) land in three bins: gaps 0.5, 0.75, 0.35. Leaf a:
    ECE 0.5; leaf b: (0.75 + 0.35) / 2; the group pools all three items: 1.6 / 3 (not the mean of its leaves).
    A task whose `acc` is not argmax correctness (truthfulqa_mc2's is a probability) gets none, nor its group."""
    samples = {"a": [record([0.0, 0.0], 0, 1.0)],
               "b": [record([math.log(3), 0.0], 1, 0.0), record([0.0, math.log(13 / 7)], 1, 1.0)],
               "c": [record([0.0, 1.0], 1, 0.73)]}
    result = {name: {"metrics": {}, "stderr": {}, "higher_is_better": {}, "group": False, "subtasks": []}
              for name in samples}
    result["g"] = {"metrics": {}, "stderr": {}, "higher_is_better": {}, "group": True, "subtasks": ["a", "b"]}
    result["all"] = {"metrics": {}, "stderr": {}, "higher_is_better": {}, "group": True, "subtasks": ["g", "c"]}
    add_calibration(result, samples, {name: fake_mc_task(name) for name in samples})
    assert result["a"]["metrics"]["ece"] == pytest.approx(0.5)
    assert result["b"]["metrics"]["ece"] == pytest.approx(0.55)
    assert result["g"]["metrics"]["ece"] == pytest.approx(1.6 / 3)
    assert "ece" not in result["c"]["metrics"] and "ece" not in result["all"]["metrics"]
    assert (result["g"]["stderr"]["ece"], result["g"]["higher_is_better"]["ece"]) == (None, False)


@pytest.mark.parametrize("preset", ["paper", "helm"])
def test_presets_name_stock_tasks_and_valid_fewshot_keys(preset: str, mirror_root: Path):
    text = (CONF_DIR / "eval" / f"{preset}.yaml").read_text()
    assert text.startswith("#") and f"eval={preset}" in text  # a header with the launch command
    cfg = yaml.safe_load(text)
    selection = resolve_tasks(cfg["tasks"])
    assert selection.builtin == () and set(cfg["num_fewshot"]) <= set(cfg["tasks"])
    assert task_datasets(selection.stock)


def test_mirror_fingerprint_follows_the_files_read(mirror_root: Path, tmp_path: Path):
    root = tmp_path / "mirror"
    shutil.copytree(mirror_root, root)
    before = mirror_fingerprint(["mathqa_mc", "boolq"], root)
    assert before == mirror_fingerprint(["boolq"], mirror_root)  # same content elsewhere: same fingerprint
    (root / "cais/mmlu/abstract_algebra/test.jsonl").unlink()  # a file boolq does not read
    assert mirror_fingerprint(["boolq"], root) == before
    with (root / "aps/super_glue/boolq/validation.jsonl").open("a") as f:
        f.write(json.dumps({"question": "q", "passage": "p", "idx": 9, "label": 0}) + "\n")
    assert mirror_fingerprint(["boolq"], root) != before


def test_mirror_folder_that_does_not_exist(tmp_path: Path):
    with pytest.raises(MirrorError, match="is not a folder"):
        check_mirror(["boolq"], tmp_path / "absent")


def test_lm_eval_templates_are_compiled_once_and_render_as_lm_eval_renders_them():
    """quiet_lm_eval makes lm-eval compile each Jinja template once per process instead of once per document: the
    texts are exactly what lm-eval's own environment renders, and 50 documents cost one compile."""
    import lm_eval.utils

    tasks_module.quiet_lm_eval()
    template = "Q: {{question}}{% if choices %} ({{ choices | join(', ') }}){% endif %}\nA:"
    docs = [{"question": f"what is {i}+{i}?", "choices": [str(i), str(2 * i)] if i % 2 else []} for i in range(50)]
    before = tasks_module._template.cache_info()
    got = [lm_eval.utils.apply_template(template, doc) for doc in docs]
    after = tasks_module._template.cache_info()
    assert got == [lm_eval.utils.env.from_string(template).render(**doc) for doc in docs]
    assert got[1] == "Q: what is 1+1? (1, 2)\nA:" and got[0] == "Q: what is 0+0?\nA:"
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 49


def test_lm_eval_encodings_are_remembered_per_tokenizer(base_model, tokenizer, monkeypatch: pytest.MonkeyPatch):
    """Every model of a comparison is scored on the same strings with one tokenizer: the second model's HFLM
    encodes nothing, gets exactly what lm-eval's own tok_encode returns, and a fresh list each time; past
    MEMO_TOKENS strings are encoded (correctly) but not kept."""
    import weakref

    from lm_eval.models.huggingface import HFLM

    from harness.evaluation import runner

    monkeypatch.setattr(runner, "_ENCODED", weakref.WeakKeyDictionary())
    texts = ["the cat sat", "the cat sat on the mat", "x " * 40, "Q: 2+2?\nA:"]
    expected = [HFLM(pretrained=base_model, tokenizer=tokenizer, device="cpu").tok_encode(t) for t in texts]
    calls: list[str] = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text, **kw: calls.append(text) or encode(text, **kw))
    first, second = (HFLM(pretrained=base_model, tokenizer=tokenizer, device="cpu") for _ in range(2))
    runner.memoise_encoding(first)
    runner.memoise_encoding(second)

    assert [first.tok_encode(t) for t in texts] == expected and calls == texts
    second.tok_encode(texts[0]).append(-1)  # a caller changing its list changes nobody else's
    assert [second.tok_encode(t) for t in texts] == expected and calls == texts
    assert second.tok_encode(texts[1], left_truncate_len=2) == expected[1][-2:] and len(calls) == 5

    monkeypatch.setattr(runner, "_ENCODED", weakref.WeakKeyDictionary())
    monkeypatch.setattr(runner, "MEMO_TOKENS", len(expected[0]))
    bounded = HFLM(pretrained=base_model, tokenizer=tokenizer, device="cpu")
    runner.memoise_encoding(bounded)
    calls.clear()
    assert [bounded.tok_encode(t) for t in texts * 2] == expected * 2
    assert calls == texts + texts[1:]  # only the first string fitted
