"""Content-KNN: a user's score for an item is the similarity of the item's content to the content of the
items the user interacted with in train (the item-based content baseline of the cold-start literature,
e.g. ColdRec's KNN).

    c_i = || x_i^m / ||x_i^m|| / sqrt(M)  over the M modalities        (n_items, sum d_m)
    p_u = mean over i in train(u) of c_i                                 (n_users, sum d_m)
    y(u, i) = p_u^T c_i  = the mean cosine of i to the user's items      (all modalities present)

The features are Multi-KG4Rec's (``modalities``, ``encoder``; the items' rows of the aligned entity
features); an item without content in a modality contributes zeros there. Nothing is trained: the model
has no parameters, its one "epoch" only validates. It scores unseen items as well as seen ones (only
their content is used); a user with no train item with content scores every item 0.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import UserError
from ..features.align import item_content
from .base import Recommender


class ContentKNN(Recommender):
    name = "content_knn"
    uses_features = True

    def __init__(self, dataset, config, features=None):
        super().__init__(dataset, config)
        mods = [str(m) for m in (config["modalities"] or [])]
        if not mods:
            raise UserError("content_knn needs at least one modality (--modalities [image,text])")
        if features is None:
            from .multikg4rec import random_features
            if config.get("features") != "random":
                raise UserError("content_knn needs content features: build them with `multikg4rec features build`")
            features = random_features(dataset, mods, int(config["random_feature_dim"]), int(config.get("seed") or 0))
        missing = [m for m in mods if m not in features]
        if missing:
            raise UserError(f"content_knn: modalities {missing} have no features (available: {sorted(features)})")
        c, _ = item_content(features, mods, self.n_items)                      # (n_items, D)
        train = dataset.train_csr.astype(np.float32)
        counts = np.asarray(train.sum(axis=1)).ravel()
        mean = sp.diags(1.0 / np.maximum(counts, 1)) @ train                   # row means over train items
        self.register_buffer("item_rows", c, persistent=False)
        self.register_buffer("user_rows", torch.from_numpy(np.asarray(mean @ c.numpy(), dtype=np.float32)),
                             persistent=False)

    def calculate_loss(self, batch):
        raise RuntimeError("content_knn has nothing to train")                 # the trainer never calls it

    def final_embeddings(self):
        return self.user_rows, self.item_rows                                  # y(u, i) = p_u^T c_i
