"""`dem-bench-merge` on real saved checkpoints: the output loads with from_pretrained, equals the registry's
merge, and the exported mergekit YAML makes mergekit produce the same tensors."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from dem.merge import merge_state
from dem.merge_cli import main
from harness.models.loading import copy_params, load_model


@pytest.fixture
def checkpoints(micro_base, tmp_path):
    base_dir = micro_base[0]
    dirs = {}
    for i, name in enumerate(("math", "sni")):
        model = load_model(base_dir)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        dirs[name] = tmp_path / name
        model.save_pretrained(dirs[name])
    return base_dir, dirs


def _merge(args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_merged_checkpoint_loads_and_equals_the_registry_merge(checkpoints, tmp_path, capsys):
    base_dir, dirs = checkpoints
    out = tmp_path / "merged"
    main(["--base", str(base_dir), "--model", f"math={dirs['math']}", "--model", f"sni={dirs['sni']}",
          "--method", "ties", "--weight", "math=0.6", "--weight", "sni=0.3", "--param", "density=0.5",
          "--out", str(out)])
    assert capsys.readouterr().out.strip().endswith(str(out.resolve()))
    merged = copy_params(load_model(out))
    theta0 = copy_params(load_model(base_dir))
    vectors = [{k: v - theta0[k] for k, v in copy_params(load_model(d)).items()} for d in dirs.values()]
    expected = merge_state(theta0, vectors, [0.6, 0.3], "ties", {"density": 0.5})
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k], rtol=0, atol=1e-6)
    assert (out / "tokenizer.json").exists()  # the base's tokenizer travels with the merge


@pytest.mark.parametrize("method,extra", [("dem", []), ("ties", ["--param", "density=0.5"]),
                                          ("task_arithmetic", ["--param", "lambda=0.7"]), ("linear", [])])
def test_exported_mergekit_yaml_reproduces_the_merge_in_mergekit(checkpoints, tmp_path, method, extra):
    base_dir, dirs = checkpoints
    ours, yaml_file = tmp_path / "ours", tmp_path / "merge.yaml"
    main(["--base", str(base_dir), "--model", f"math={dirs['math']}", "--model", f"sni={dirs['sni']}",
          "--method", method, "--weight", "math=0.6", "--weight", "sni=0.3", *extra, "--out", str(ours),
          "--export-mergekit", str(yaml_file)])
    theirs = tmp_path / "theirs"
    mergekit_yaml = [str(p) for p in (sys.prefix + "/bin/mergekit-yaml",)]
    proc = subprocess.run([*mergekit_yaml, str(yaml_file), str(theirs), "--no-copy-tokenizer", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_file(str(ours / "model.safetensors"))
    b = {}
    for f in theirs.glob("*.safetensors"):
        b |= load_file(str(f))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k].float(), rtol=0, atol=1e-6)


def test_bad_input_exits_2_with_one_line(checkpoints, tmp_path, capsys):
    base_dir, dirs = checkpoints
    good = ["--base", str(base_dir), "--model", f"math={dirs['math']}", "--out", str(tmp_path / "o")]
    bad_nan = tmp_path / "nan"
    model = load_model(dirs["math"])
    model.save_pretrained(bad_nan)
    tensors = load_file(str(bad_nan / "model.safetensors"))
    first = next(iter(tensors))
    tensors[first][0] = float("nan")
    save_file(tensors, str(bad_nan / "model.safetensors"), metadata={"format": "pt"})
    wide = tmp_path / "wide"
    cfg = load_model(dirs["sni"]).config
    cfg.intermediate_size *= 2
    type(load_model(dirs["sni"]))(cfg).save_pretrained(wide)
    cases = [
        (["--base", str(tmp_path / "missing"), *good[2:]], "no such directory"),
        ([*good, "--method", "tiess"], "Did you mean 'ties'"),
        ([*good, "--method", "ties", "--param", "densty=0.5"], "has no parameter 'densty'"),
        ([*good, "--weight", "code=0.5"], "no --model named 'code'"),
        ([*good, "--model", f"bad={bad_nan}"], f"bad: tensor '{first}' contains NaN or Inf"),
        ([*good, "--model", f"wide={wide}"], "wide: architecture mismatch with base: intermediate_size"),
    ]
    capsys.readouterr()  # drop the set-up's progress bars
    for args, expected in cases:
        assert _merge(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "o").exists()
