import pytest
import torch

from dem.merge import merge_state
from dem.vectors import VectorIntegrityError, distribution_vector, load_vector, load_vectors, save_vector, sha256_file
from harness.models.loading import copy_params


def _tuned(state, seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}


def test_delta_is_computed_in_fp32_even_for_a_bf16_model():
    base = {"w": torch.tensor([256.0, 1.0]).bfloat16()}
    tuned = {"w": torch.tensor([1.0078125, 1.0078125]).bfloat16()}
    delta = distribution_vector(base, tuned)["w"]
    assert delta.dtype == torch.float32
    assert delta.tolist() == [-254.9921875, 0.0078125]  # exact; bf16 arithmetic would round the first to −255
    assert (tuned["w"] - base["w"])[0].item() == -255.0


def test_record_names_the_largest_tensor_and_the_exact_error_of_the_cast(base_model, tmp_path):
    theta0 = copy_params(base_model)
    delta = distribution_vector(theta0, _tuned(theta0, 1))
    largest = max(delta, key=lambda k: delta[k].numel())

    same = save_vector(delta, tmp_path / "fp32.safetensors")
    assert same["dtype"] == "float32" and same["max_abs_error"] == 0.0 and same["error_tensor"] == largest
    assert len(same["sha256"]) == 64

    record = save_vector(delta, tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    assert record["dtype"] == "bfloat16" and record["error_tensor"] == largest
    stored = load_vector(tmp_path / "bf16.safetensors", record["sha256"])
    assert all(v.dtype == torch.bfloat16 for v in stored.values())
    exact = (delta[largest].double() - stored[largest].double()).abs().max().item()
    assert record["max_abs_error"] == exact
    # bf16 keeps 8 significant bits: rounding loses at most half a unit in the last place, 2⁻⁸ of the magnitude
    assert 0 < exact <= delta[largest].abs().max().item() * 2**-8
    assert save_vector(delta, tmp_path / "by_name.safetensors", dtype="bfloat16")["sha256"] == record["sha256"]


def test_load_casts_and_places_on_request(tmp_path):
    record = save_vector({"w": torch.arange(4.0)}, tmp_path / "d.safetensors", dtype=torch.bfloat16)
    loaded = load_vector(tmp_path / "d.safetensors", record["sha256"], dtype=torch.float32, device="cpu")
    assert loaded["w"].dtype == torch.float32 and loaded["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_vector_whose_bytes_changed_is_never_loaded(tmp_path):
    path = tmp_path / "d.safetensors"
    record = save_vector({"w": torch.ones(4)}, path)
    save_vector({"w": torch.full((4,), 2.0)}, path)  # swapped behind the manifest's back
    with pytest.raises(VectorIntegrityError, match="does not match the manifest"):
        load_vector(path, record["sha256"])
    assert not path.with_suffix(".tmp").exists()  # the atomic write left no temporary behind


def test_a_vector_saved_in_bf16_and_fp32_merges_within_the_recorded_error(base_model, tmp_path):
    theta0 = copy_params(base_model)
    delta = distribution_vector(theta0, _tuned(theta0, 2))
    records = {dt: save_vector(delta, tmp_path / f"{dt}.safetensors", dtype=dt) for dt in ("float32", "bfloat16")}
    loaded = {dt: load_vector(tmp_path / f"{dt}.safetensors", r["sha256"]) for dt, r in records.items()}
    w = [0.8]
    fp32, bf16 = (merge_state(theta0, [loaded[dt]], w, "dem") for dt in ("float32", "bfloat16"))
    name, error = records["bfloat16"]["error_tensor"], records["bfloat16"]["max_abs_error"]
    assert bf16[name].dtype == torch.float32  # the merge is in the model's dtype, not the vector's
    # |w|·error from the cast, plus one fp32 rounding of the merged value (half an ulp, 2⁻²⁴ relative)
    bound = abs(w[0]) * error + fp32[name].abs().max().item() * 2**-23
    assert (fp32[name] - bf16[name]).abs().max().item() <= bound
    for k in theta0:  # every other tensor: within bf16's relative resolution of its own Δ
        diff = (fp32[k] - bf16[k]).abs().max().item()
        assert diff <= abs(w[0]) * delta[k].abs().max().item() * 2**-8 + fp32[k].abs().max().item() * 2**-23


def test_load_vectors_stacks_the_rows_checks_every_hash_and_refuses_mismatches(tmp_path):
    paths = [tmp_path / f"v{i}.safetensors" for i in range(3)]
    records = [save_vector({"w": torch.full((2, 3), float(i)), "b": torch.ones(2)}, p, dtype=dt)
               for i, (p, dt) in enumerate(zip(paths, ["float32", "float32", "bfloat16"], strict=True))]
    hashes = [r["sha256"] for r in records]
    with pytest.raises(ValueError, match="pass dtype= to load vectors stored in different dtypes together"):
        load_vectors(paths, hashes)
    loaded = load_vectors(paths, hashes, dtype=torch.float32)
    assert [v["w"][0, 0].item() for v in loaded] == [0.0, 1.0, 2.0] and loaded[2]["w"].dtype == torch.float32
    storage = loaded[0]["w"].untyped_storage().data_ptr()
    assert all(v["w"].untyped_storage().data_ptr() == storage for v in loaded)  # rows of one buffer
    with pytest.raises(VectorIntegrityError):
        load_vectors(paths, [hashes[0], hashes[0], hashes[2]])
    save_vector({"w": torch.zeros(2, 3)}, paths[1])
    with pytest.raises(ValueError, match="vectors must share parameter names"):
        load_vectors(paths[:2], [hashes[0], sha256_file(paths[1])])
