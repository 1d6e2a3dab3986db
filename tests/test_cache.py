import json

from harness.data.builtin import generate_splits
from harness.data.tokens import encode
from harness.models.loading import LoadOptions, load_model, load_tokenizer
from harness.runs.cache import RunCache, spec_key
from harness.runs.spec import read_pool, store_pools, tokenizer_spec
from harness.runs.trainer import finetune


def test_cache_builds_once_and_hits_on_rerun(tmp_path):
    cache = RunCache(tmp_path)
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"x")
        return {"value": 42}

    first = cache.get_or_create("train", {"a": 1, "b": [1, 2]}, build)
    second = cache.get_or_create("train", {"b": [1, 2], "a": 1}, build)  # same spec, other key order
    assert len(calls) == 1 and not first.hit and second.hit
    assert second.record["value"] == 42 and (second.path / "weights.bin").exists()
    other = cache.get_or_create("train", {"a": 2, "b": [1, 2]}, build)
    assert len(calls) == 2 and not other.hit and other.path != first.path


def test_interrupted_build_is_not_taken_for_a_result(tmp_path):
    cache = RunCache(tmp_path)

    def crash(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    try:
        cache.get_or_create("train", {"a": 1}, crash)
    except RuntimeError:
        pass
    key = spec_key("train", {"a": 1})
    assert not (tmp_path / "train" / key).exists()
    entry = cache.get_or_create("train", {"a": 1}, lambda d: {"ok": True})
    assert not entry.hit and json.loads((entry.path / "record.json").read_text())["ok"] is True


def test_real_finetune_through_the_cache_is_reused(micro_base, tmp_path):
    base_dir, _, cfg = micro_base
    tok = load_tokenizer(base_dir)
    pools = {"mathqa": [encode(tok, e) for e in generate_splits("mathqa", 0, 100, 1, 1).train]}
    cache = RunCache(tmp_path)
    trained = []

    def build(folder):
        trained.append(1)
        return finetune(folder, base_dir, pools, {"mathqa": 1.0}, cfg.budget, 0, tok.pad_token_id)

    spec = {"base": "micro", "weights": {"mathqa": 1.0}, "budget": dict(cfg.budget)}
    first = cache.get_or_create("train", spec, build)
    second = cache.get_or_create("train", spec, build)
    assert trained == [1] and second.hit and second.record == first.record
    assert first.record["train_tokens"] == cfg.budget.train_tokens // cfg.budget.seq_len * cfg.budget.seq_len
    assert (second.path / "model.safetensors").exists()
    assert load_model(second.path).config.hidden_size == cfg.model.hidden_size


def test_a_cached_token_pool_is_not_tokenized_again(tmp_path):
    """store_pools tokenizes a distribution only for a pool the cache lacks: a warm rerun tokenizes nothing."""
    calls = []
    seqs = [([5, 6, 7, 2], [-100, 6, 7, 2]), ([8, 2], [8, 2])]

    def tokenize():
        calls.append(1)
        return seqs

    cache, spec = RunCache(tmp_path), tokenizer_spec("base-key", LoadOptions())
    first = store_pools(cache, spec, {"mathqa": tokenize}, {"mathqa": "rows-fingerprint"})
    second = store_pools(cache, spec, {"mathqa": tokenize}, {"mathqa": "rows-fingerprint"})
    assert first == second and calls == [1]
    assert read_pool(tmp_path / "pools" / first["mathqa"] / "pool.safetensors") == seqs
    store_pools(cache, spec, {"mathqa": tokenize}, {"mathqa": "other-rows"})  # other rows: tokenized
    assert calls == [1, 1]
