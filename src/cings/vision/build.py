"""``cings vlm build``: a vision tower + a causal LM -> a LLaVA folder that transformers loads as it is.

The recipe (../shared/docs/design-facts.md §2, verified on transformers 5.23): ``<image>`` is added
to the LM's tokenizer as one special token and the embeddings grow by it; a ``LlavaConfig`` takes
the tower's config and the LM's; a fresh ``LlavaForConditionalGeneration`` receives the LM's and
the tower's weights by ``load_state_dict`` (strict, so a missing key is an error, not a random
weight), and its 2-layer MLP projector stays freshly initialised for the pretrain stage to learn.

The count of image tokens is the trap: the processor writes ``(H/patch)·(W/patch) +
num_additional_image_tokens`` of them, minus one for the ``default`` strategy, and the model checks
that count against its features. A CLIP tower has a CLS token that ``default`` drops (extra 1),
SigLIP has none (``full``, extra 0). :func:`image_token_count` is that rule, and the build checks
it with a real forward before it writes anything.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BuildError", "build_vlm", "image_token_count", "VISION_TYPES", "IMAGE_TOKEN", "multimodal_template"]

IMAGE_TOKEN = "<image>"
BUILD_FILE = "cings_vlm_build.json"
# model_type of the vision config -> (feature select strategy, extra tokens the processor counts)
VISION_TYPES = {"clip_vision_model": ("default", 1), "siglip_vision_model": ("full", 0)}


class BuildError(ValueError):
    pass


@dataclass(frozen=True)
class TowerInfo:
    model_type: str
    image_size: int
    patch_size: int
    hidden_size: int
    strategy: str
    extra: int


def image_token_count(image_size: int, patch_size: int, strategy: str, extra: int) -> int:
    """Image tokens per image, as ``LlavaProcessor.replace_image_token`` counts them."""
    count = (image_size // patch_size) ** 2 + extra
    return count - 1 if strategy == "default" else count


def _tower_info(folder: Path) -> TowerInfo:
    path = folder / "config.json"
    if not path.is_file():
        raise BuildError(f"--vision-tower {folder}: no config.json (a folder written by save_pretrained)")
    config = json.loads(path.read_text())
    kind = config.get("model_type")
    if kind in ("clip", "siglip"):  # a whole CLIP/SigLIP: take its vision half
        config, kind = config.get("vision_config") or {}, f"{kind}_vision_model"
    if kind not in VISION_TYPES:
        raise BuildError(f"--vision-tower {folder}: model_type {kind!r} is not a CLIP or SigLIP vision model"
                         f" (supported: {', '.join(VISION_TYPES)})")
    strategy, extra = VISION_TYPES[kind]
    try:
        return TowerInfo(kind, int(config["image_size"]), int(config["patch_size"]), int(config["hidden_size"]), strategy, extra)
    except KeyError as err:
        raise BuildError(f"{path}: field {err.args[0]!r} missing") from None


def _load_tower(folder: Path, info: TowerInfo) -> Any:
    """The tower's weights as a module whose state dict is that of Llava's ``vision_tower``."""
    from transformers import CLIPModel, CLIPVisionModel, SiglipModel, SiglipVisionModel

    whole = json.loads((folder / "config.json").read_text()).get("model_type") in ("clip", "siglip")
    if info.model_type == "clip_vision_model":
        return CLIPModel.from_pretrained(folder).vision_model if whole else CLIPVisionModel.from_pretrained(folder)
    return SiglipModel.from_pretrained(folder).vision_model if whole else SiglipVisionModel.from_pretrained(folder)


def _image_processor(folder: Path, info: TowerInfo) -> Any:
    """The tower's own image processor when it saved one, else the family's default at its resolution."""
    from transformers import AutoImageProcessor, CLIPImageProcessor, SiglipImageProcessor

    if (folder / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(folder)
    elif info.model_type == "clip_vision_model":
        side = info.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    else:
        processor = SiglipImageProcessor(size={"height": info.image_size, "width": info.image_size})
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    side = _side(crop) or _side(processor.size)
    if side != info.image_size:
        raise BuildError(f"--vision-tower {folder}: its image processor makes {side}-pixel images, but the tower"
                         f" takes {info.image_size}; the image-token count would not match")
    return processor


def _side(size: Any) -> int | None:
    """Output side of a processor ``size``/``crop_size`` (a dict or transformers' ``SizeDict``)."""
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    return get("height") or get("shortest_edge")


def multimodal_template(text_template: str) -> str:
    """The LM's chat template, taught that a message's content may be a list of image and text parts.

    The processor's ``apply_chat_template`` hands such lists to the template; a text LM's template
    expects strings. The prelude flattens each message (``<image>`` for an image part) and hands the
    LM's own template the conversation it knows, so text and image turns render exactly alike.
    """
    prelude = (
        "{%- set ns = namespace(msgs=[]) -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set ns.msgs = ns.msgs + [m] -%}"
        "{%- else -%}{%- set part = namespace(text='') -%}"
        "{%- for p in m['content'] -%}"
        "{%- if p['type'] == 'image' -%}{%- set part.text = part.text ~ '" + IMAGE_TOKEN + "' -%}"
        "{%- elif p['type'] == 'text' -%}{%- set part.text = part.text ~ p['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': part.text}] -%}"
        "{%- endif -%}{%- endfor -%}"
        "{%- set messages = ns.msgs -%}"
    )
    return prelude + text_template


def build_vlm(vision_tower: str | Path, language_model: str | Path, output: str | Path, *, overwrite: bool = False,
              log: Any = None) -> dict[str, Any]:
    """Assemble, check and save; returns what was built (also written to ``cings_vlm_build.json``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    log = log or (lambda msg: None)
    tower_dir, lm_dir, output = Path(vision_tower), Path(language_model), Path(output)
    for flag, folder in (("--vision-tower", tower_dir), ("--language-model", lm_dir)):
        if not folder.is_dir():
            raise BuildError(f"{flag} {folder}: no such folder")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise BuildError(f"{output}: exists and is not empty; choose another --output or pass --overwrite")
        if not (output / BUILD_FILE).is_file():
            raise BuildError(f"{output}: --overwrite only replaces an earlier `cings vlm build`, and this folder is not one")
        shutil.rmtree(output)
    info = _tower_info(tower_dir)
    image_processor = _image_processor(tower_dir, info)
    tok = AutoTokenizer.from_pretrained(lm_dir)
    if not getattr(tok, "chat_template", None):
        raise BuildError(f"--language-model {lm_dir}: its tokenizer has no chat template (export the run with"
                         " `cings export`, which writes it)")
    if tok.pad_token is None:
        raise BuildError(f"--language-model {lm_dir}: its tokenizer has no pad token (export the run with `cings export`)")
    if IMAGE_TOKEN in tok.get_vocab():
        raise BuildError(f"--language-model {lm_dir}: its tokenizer already has {IMAGE_TOKEN!r}; give the plain LM")
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if tok.encode(IMAGE_TOKEN * 2, add_special_tokens=False) != [image_id, image_id]:
        raise BuildError(f"{IMAGE_TOKEN!r} does not encode as one token per copy with this tokenizer")

    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tower = _load_tower(tower_dir, info)
    lm.resize_token_embeddings(len(tok), mean_resizing=True)  # the new row starts at the mean embedding
    n_image = image_token_count(info.image_size, info.patch_size, info.strategy, info.extra)
    config = LlavaConfig(vision_config=tower.config.to_dict(), text_config=lm.config.to_dict(), image_token_id=image_id,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy=info.strategy, image_seq_length=n_image,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    # strict: every weight of the LM and of the tower must land; only the projector stays fresh
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(lm.lm_head.state_dict(), strict=True)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False) or lm.config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = lm.generation_config
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=info.patch_size,
                               vision_feature_select_strategy=info.strategy, num_additional_image_tokens=info.extra,
                               chat_template=multimodal_template(tok.chat_template))
    _check_forward(model, processor, info, n_image)
    tmp = output.with_name(f".{output.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    report = {"vision_tower": str(tower_dir.resolve()), "language_model": str(lm_dir.resolve()),
              "tower_type": info.model_type, "image_size": info.image_size, "patch_size": info.patch_size,
              "vision_feature_select_strategy": info.strategy, "num_additional_image_tokens": info.extra,
              "image_tokens": n_image, "image_token_id": image_id, "projector": "mlp2x_gelu",
              "parameters": sum(p.numel() for p in model.parameters())}
    (tmp / BUILD_FILE).write_text(json.dumps(report, indent=2) + "\n")
    tmp.rename(output)
    log(f"built {output}: {info.model_type} {info.image_size}px/{info.patch_size} -> {n_image} image tokens,"
        f" {report['parameters'] / 1e6:.1f} M parameters")
    return {"output": str(output), **report}


def _check_forward(model: Any, processor: Any, info: TowerInfo, n_image: int) -> None:
    """One real forward through the processor: the counts agree, or the build fails here, not in training."""
    import torch
    from PIL import Image

    image = Image.new("RGB", (info.image_size, info.image_size), (120, 30, 200))
    batch = processor(images=[image], text=[f"{IMAGE_TOKEN}\nWhat is this?"], return_tensors="pt")
    found = int((batch["input_ids"] == model.config.image_token_id).sum())
    if found != n_image:
        raise BuildError(f"the processor writes {found} image tokens, the tower gives {n_image} features")
    with torch.no_grad():
        model(**batch, use_cache=False)
