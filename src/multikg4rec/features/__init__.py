"""Entity content (text, image, audio...) -> a per-(dataset, encoder) feature store -> tensors aligned to
dataset entity ids (docs/model.md §2).

    store = build_features("ml-1m", "minilm+efficientnet", data_dir=..., cache_dir=...)
    feats = align_features(store, dataset, fill="other_modality")   # {modality: (x, mask)}
"""
from .align import FILLS, align_features, item_content, load_model_features, real_content_masks, user_mean_features
from .content import ENTITY, ITEM, EntityContent, collect_content, content_coverage
from .encoders import ENCODERS, BadInput, Encoder, make_encoder
from .precomputed import PRECOMPUTED_PRESETS, PrecomputedEncoder, build_precomputed
from .store import FeatureStore, build_features, build_store, default_cache_dir, list_stores

__all__ = [
    "ENCODERS", "ENTITY", "FILLS", "ITEM", "PRECOMPUTED_PRESETS", "BadInput", "Encoder", "EntityContent",
    "FeatureStore", "PrecomputedEncoder", "item_content", "align_features", "build_features", "build_precomputed", "build_store",
    "collect_content", "content_coverage", "default_cache_dir", "list_stores", "load_model_features", "make_encoder",
    "real_content_masks", "user_mean_features",
]
