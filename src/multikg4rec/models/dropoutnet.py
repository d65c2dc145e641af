"""DropoutNet: Volkovs, Yu, Poutanen, "DropoutNet: Addressing Cold Start in Recommender Systems", NeurIPS 2017.

A pair of networks maps preference and content inputs to one space; trained with dropout on the preference
input, it learns to fall back on content when an item (or user) has no preferences:

    u_pref, v_pref = U_u, V_i            the latent factors of a trained CF model (here: the BPR-MF run of the
                                         same split, pretrain_path: auto); v_pref = 0 for an item with no train
                                         interaction (a new item)
    u_cont = mean content of u's train items, v_cont = c_i (content of i, features.align.item_content)
    f_U = MLP([u_pref ; u_cont]), f_V = MLP([v_pref ; v_cont])          (Eq. 3: tanh layers)
    L = mean over (u, i) of ( f_U(u)^T f_V(i) - U_u^T V_i )^2         (Eq. 2: reproduce the CF scores)

with, in training, each example's item preference input set to 0 with probability ``pref_dropout`` (and the
user's with the same probability), "input dropout" (Sec. 3.2). The (u, i) pairs are the trainer's BPR batches:
each user with its positive and its negative item. At test, new items have v_pref = 0 and are scored from
content: y(u, i) = f_U(u)^T f_V(i).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..errors import UserError
from ..features.align import item_content
from .base import Recommender
from .pretrained import bprmf_embeddings, bprmf_prerequisites


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for k in range(len(sizes) - 1):
        lin = nn.Linear(sizes[k], sizes[k + 1])
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()] if k < len(sizes) - 2 else [lin]
    return nn.Sequential(*layers)


class DropoutNet(Recommender):
    name = "dropoutnet"
    uses_features = True
    prerequisites = classmethod(lambda cls, config: bprmf_prerequisites(config))   # U, V from BPR-MF

    def __init__(self, dataset, config, features=None):
        super().__init__(dataset, config)
        mods = [str(m) for m in (config["modalities"] or [])]
        if features is None and config.get("features") == "random":
            from .multikg4rec import random_features
            features = random_features(dataset, mods, int(config["random_feature_dim"]), int(config.get("seed") or 0))
        if not mods or features is None or any(m not in features for m in mods):
            raise UserError("dropoutnet needs content features for --modalities (build them with "
                            "`multikg4rec features build`)")
        d0 = int(config["embedding_size"])
        if str(config.get("pretrain_path")) in ("None", ""):
            raise UserError("dropoutnet: pretrain_path must name the BPR-MF run its preference inputs come from "
                            "(auto: the default run of the same split)")
        U, V = bprmf_embeddings(config, (self.n_users, d0), (self.n_items, d0))
        has_pref = torch.from_numpy(np.bincount(dataset.train[:, 1], minlength=self.n_items) > 0)
        V = V * has_pref[:, None]                                            # a new item has no preferences
        c, _ = item_content(features, mods, self.n_items)
        train = dataset.train_csr.astype(np.float32)
        mean = sp.diags(1.0 / np.maximum(np.asarray(train.sum(axis=1)).ravel(), 1)) @ train
        self.register_buffer("u_pref", U, persistent=False)
        self.register_buffer("v_pref", V, persistent=False)
        self.register_buffer("u_cont", torch.from_numpy(np.asarray(mean @ c.numpy(), dtype=np.float32)),
                             persistent=False)
        self.register_buffer("v_cont", c, persistent=False)
        hidden = [int(h) for h in config["hidden"]]
        self.f_u = _mlp([d0 + c.shape[1], *hidden])
        self.f_v = _mlp([d0 + c.shape[1], *hidden])
        self.p = float(config["pref_dropout"])

    def _inputs(self, pref: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:                                     # input dropout (Sec. 3.2)
            keep = (torch.rand(pref.shape[0], 1, device=pref.device) >= self.p).to(pref.dtype)
            pref = pref * keep
        return torch.cat([pref, cont], 1)

    def calculate_loss(self, batch):
        users = torch.cat([batch["users"], batch["users"]])
        items = torch.cat([batch["pos_items"], batch["neg_items"]])
        target = (self.u_pref[users] * self.v_pref[items]).sum(-1)          # U_u^T V_i
        eu = self.f_u(self._inputs(self.u_pref[users], self.u_cont[users]))
        ev = self.f_v(self._inputs(self.v_pref[items], self.v_cont[items]))
        return ((eu * ev).sum(-1) - target).pow(2).mean()                   # Eq. 2

    def final_embeddings(self):
        return (self.f_u(torch.cat([self.u_pref, self.u_cont], 1)),
                self.f_v(torch.cat([self.v_pref, self.v_cont], 1)))         # y(u, i) = f_U(u)^T f_V(i)
