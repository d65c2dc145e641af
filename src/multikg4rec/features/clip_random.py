"""Randomly initialised CLIP checkpoints, built offline: for tests, benchmarks and smoke runs of the
``clip`` encoder where no real CLIP weights exist. Embeddings from them carry NO meaning.

    save_random_clip("tiny-clip/")                       # tiny: a few hundred kB
    make_encoder("clip", clip_path="tiny-clip/")         # the same loader as for real weights
"""
from __future__ import annotations

from pathlib import Path


def byte_level_vocab() -> dict[str, int]:
    """A complete byte-level BPE vocabulary with no merges (GPT-2/CLIP byte-to-unicode table): every text
    tokenises, one token per character, with no download."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {ch: k for k, ch in enumerate(chars)}
    vocab.update({ch + "</w>": len(chars) + k for k, ch in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def random_clip(tiny: bool = True, seed: int = 0, workdir: str | Path | None = None):
    """``(CLIPModel, CLIPProcessor)`` with random weights: ``tiny`` (2 layers, 32 wide, 32 px images,
    16-d projections) or ViT-B/32 sizes (the CLIPConfig defaults, 512-d projections, 224 px)."""
    import json
    import tempfile

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as ImageProc
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as ImageProc
    vocab = byte_level_vocab()
    try:
        tok = CLIPTokenizer(vocab=vocab, merges=[])
    except TypeError:  # transformers 4: the constructor takes files
        d = Path(workdir or tempfile.mkdtemp())
        (d / "vocab.json").write_text(json.dumps(vocab))
        (d / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    if tiny:
        image_proc = ImageProc(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        cfg = CLIPConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, bos_token_id=bos,
                             eos_token_id=eos, pad_token_id=eos),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=16)
    else:
        image_proc = ImageProc()  # 224 px, CLIP mean/std
        cfg = CLIPConfig(projection_dim=512,
                         text_config=dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    torch.manual_seed(seed)
    return CLIPModel(cfg).eval(), CLIPProcessor(image_processor=image_proc, tokenizer=tok)


def save_random_clip(path: str | Path, tiny: bool = True, seed: int = 0) -> Path:
    """Write a random CLIP checkpoint (config, weights, tokenizer, processor) to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, proc = random_clip(tiny=tiny, seed=seed, workdir=path)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path
