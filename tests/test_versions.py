"""The version constants that keep cached results honest: a change to tokenisation or training code that is not
matched by a version bump fails here, so nobody reuses results the old code built by accident.

Each guarded stage is recorded as (version, hash of its code's syntax tree without docstrings): comments and
docstrings may change freely. When this fails, decide: if the change alters what the stage produces, bump its
constant; either way record the new (version, hash) printed in the failure."""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

import pytest

from harness.data import tokens
from harness.models import lora
from harness.runs import spec as runs

ROOT = Path(__file__).resolve().parents[1]

# stage: (the constant that must be bumped, its module, the files whose code it covers, recorded version, hash)
GUARDED = {
    # the layout move (#20) changed only these files' import paths: versions kept, hashes re-recorded
    "tokenisation": ("TOKENIZE_VERSION", tokens, ["harness/data/tokens.py"], 1, "db694fb9fdc469f2"),
    # TRAIN_VERSION stays 1 across the seeded LoRA initialisation: full fine-tuning trains exactly as before (its
    # keys are pinned in tests/test_lora_checks.py); LoRA runs carry LORA_VERSION, which was bumped instead
    "training": ("TRAIN_VERSION", runs, ["harness/runs/trainer.py", "baselines/mixture.py"], 1, "a608f84ebd64e78c"),
    "lora": ("LORA_VERSION", lora, ["harness/models/lora.py"], 2, "db9301d89c19041d"),  # + layer checks: same training
}


def code_hash(files: list[str]) -> str:
    """sha256 of the files' syntax trees with docstrings removed (comments are not in the tree)."""
    digest = hashlib.sha256()
    for name in files:
        tree = ast.parse((ROOT / name).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("stage", sorted(GUARDED))
def test_a_stage_s_code_changes_only_with_its_version_recorded(stage):
    constant, module, files, version, recorded = GUARDED[stage]
    current = (getattr(module, constant), code_hash(files))
    assert current == (version, recorded), (
        f"{', '.join(files)} changed since {constant}={version} was recorded. If the change alters what the "
        f"{stage} stage produces, bump {constant}; either way record {current} for '{stage}' in "
        "tests/test_versions.py GUARDED.")


def test_the_hash_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.py").write_text('def f(x):\n    """Doc."""\n    return x + 1\n')
    (tmp_path / "b.py").write_text('def f(x):\n    """Other doc."""\n    # a comment\n    return x + 1\n')
    (tmp_path / "c.py").write_text('def f(x):\n    return x + 2\n')
    assert code_hash(["a.py"]) == code_hash(["b.py"]) != code_hash(["c.py"])
