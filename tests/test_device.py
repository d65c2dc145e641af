"""The device path (config ``device``). No GPU runs here (CI has none), so what is checked on CPU is
what a GPU run relies on: ``model.to(device)`` reaches EVERY tensor a model holds (parameters,
buffers, graph adjacencies, plain tensor attributes of any submodule), the moved model computes the
same loss, and a device torch cannot use is a one-line error before anything is written."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from multikg4rec.config import config_hash, load_config, resolve_device
from multikg4rec.errors import UserError
from multikg4rec.nn import SparseAdjacency
from multikg4rec.models import get_model_class
from multikg4rec.sampling import BPRSampler, KGSampler
from multikg4rec.models import build_model

SMALL = {
    "bprmf": {}, "lightgcn": {}, "spectralcf": {}, "cke": {}, "kgcn": {}, "kgat": {},
    "convncf": {"embedding_size": 16, "channels": [8, 8, 8, 8], "pretrain_path": None},
    "mkgat": {"features": "random", "embedding_size": 16, "layers": [16, 8]},
    "multikg4rec": {"features": "random", "random_feature_dim": 16, "embedding_size": 16, "layers": [16, 8],
                    "fusion_blocks": 1, "fusion_heads": 2, "fusion_items": 8},
    "content_knn": {"features": "random", "random_feature_dim": 16},
    "dropoutnet": {"features": "random", "random_feature_dim": 16, "embedding_size": 8, "hidden": [8, 8],
                   "pretrain_path": "BPRMF"},          # BPRMF: a stand-in BPR-MF checkpoint (_config)
}


def _config(name, ds, tmp_path):
    """The SMALL config of ``name``; a stand-in BPR-MF checkpoint of ``ds``'s sizes where one is asked for."""
    cfg = load_config(name, "ml-100k", None, {"seed": 7} | SMALL[name])
    if cfg.get("pretrain_path") == "BPRMF":
        d = int(cfg["embedding_size"])
        g = torch.Generator().manual_seed(0)
        torch.save({"model": {"user_emb.weight": torch.randn(ds.n_users, d, generator=g),
                              "item_emb.weight": torch.randn(ds.n_items, d, generator=g)}}, tmp_path / "bpr.pt")
        cfg["pretrain_path"] = str(tmp_path / "bpr.pt")
    return cfg


def _tensors(model) -> list[tuple[str, torch.Tensor]]:
    """Every non-empty tensor reachable from the model's modules: parameters, buffers, and whatever their
    attributes hold (containers, SparseAdjacency, helper objects), the Dataset excepted."""
    from multikg4rec.data import Dataset
    out, seen = [], set()

    def visit(obj, path, depth=0):
        if id(obj) in seen or depth > 6 or isinstance(obj, (Dataset, str, bytes, int, float, type(None))):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.numel():
                out.append((path, obj))
        elif isinstance(obj, torch.nn.Module):
            return                                           # walked through model.modules() below
        elif isinstance(obj, dict):
            for k, v in obj.items():
                visit(v, f"{path}[{k!r}]", depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for i, v in enumerate(obj):
                visit(v, f"{path}[{i}]", depth + 1)
        elif hasattr(obj, "__dict__") and not callable(obj):
            for k, v in vars(obj).items():
                visit(v, f"{path}.{k}", depth + 1)

    for name, module in model.named_modules():
        for k, v in vars(module).items():
            if k in ("_modules", "_forward_hooks", "_backward_hooks", "_forward_pre_hooks"):
                continue
            visit(v, f"{name or 'model'}.{k}")
    return out


def _one_step(model, ds, cfg):
    if not any(p.requires_grad for p in model.parameters()):
        return torch.zeros(())                         # nothing to train (content_knn): only its tensors move
    model.on_epoch_end(1)                     # e.g. KGAT's attention update, from the current parameters
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = next(iter(BPRSampler(ds.train, ds.n_items, 256, rng)))
    loss = model.calculate_loss(batch)
    if model.uses_kg_loss:
        triples, n_nodes = model.kg_train_triples()
        loss = loss + model.calculate_kg_loss(next(iter(KGSampler(triples, n_nodes, 256, rng))))
    return loss


@pytest.mark.parametrize("name", sorted(SMALL))
def test_to_device_reaches_every_tensor_and_keeps_the_loss(ml100k_small, name, tmp_path):
    """``model._apply(fn)`` is what ``model.to(device)`` runs: with fn = clone every tensor the model can
    reach must be a new one afterwards (a tensor left behind would stay on the CPU on a GPU run and fail
    there, or silently be read stale), and the moved model must compute the same loss."""
    cfg = _config(name, ml100k_small, tmp_path)
    cfg.update({k: 0.0 for k in ("mess_dropout", "dropout", "fusion_dropout", "node_dropout") if k in cfg})
    model = build_model(cfg, ml100k_small)
    model.train()                                          # the training path, without dropout
    before_loss = _one_step(model, ml100k_small, cfg)      # lazy caches (transposes, slices) now exist
    before = _tensors(model)
    keep = [t.detach() for _, t in before]     # the old storages stay alive (a Parameter's .data is swapped
                                               # in place), so no clone can reuse their addresses
    ptrs = {t.data_ptr(): p for p, t in before}
    calls: dict[int, int] = {}

    def clone(t):
        if t.numel():
            calls[t.data_ptr()] = calls.get(t.data_ptr(), 0) + 1
        return t.clone()

    model._apply(clone)
    left = [p for p, t in _tensors(model) if t.data_ptr() in ptrs]
    assert not left, f"{name}: tensors not reached by model.to(): {left[:5]}"
    # a tensor held in two places and copied twice would become two tensors on the GPU (an in-place
    # update through one, e.g. an attention refresh, would not reach the other)
    twice = [ptrs.get(k, k) for k, n in calls.items() if n > 1]
    assert not twice, f"{name}: tensors copied more than once by model.to(): {twice[:5]}"
    after_loss = _one_step(model, ml100k_small, cfg)
    torch.testing.assert_close(after_loss, before_loss)
    assert len(keep) > 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_moved_model_ranks_the_same(ml100k_small, name, tmp_path):
    """The evaluation path (prepare_eval + full_sort_predict) of every moved model scores as before."""
    cfg = _config(name, ml100k_small, tmp_path)
    model = build_model(cfg, ml100k_small).eval()
    users = torch.arange(0, ml100k_small.n_users, 7)
    with torch.no_grad():
        model.prepare_eval()
        before = model.full_sort_predict(users)
        model._apply(lambda t: t.clone())
        model.prepare_eval()
        after = model.full_sort_predict(users)
    assert before.shape == (len(users), ml100k_small.n_items)
    torch.testing.assert_close(after, before)


def test_trainer_device_context_path(ml100k_small, tmp_path, monkeypatch):
    """The code a GPU run takes (model code under torch's default-device context, batches moved per step),
    exercised on the CPU: a one-epoch KGAT run through it gives the same metrics as the plain CPU path."""
    from multikg4rec.training import Trainer, run
    over = {"epochs": 1, "seed": 3, "batch_size": 4096, "kg_batch_size": 8192}
    plain = run(load_config("kgat", "ml-100k", None, over | {"output_dir": str(tmp_path / "a")}),
                dataset=ml100k_small, quiet=True).metrics
    monkeypatch.setattr(Trainer, "on_device", lambda self: self.device)          # torch.device as a context
    monkeypatch.setattr(Trainer, "_to_device", lambda self, b: {k: v.to(self.device) for k, v in b.items()})
    ctx = run(load_config("kgat", "ml-100k", None, over | {"output_dir": str(tmp_path / "b")}),
              dataset=ml100k_small, quiet=True).metrics
    assert ctx["device"] == plain["device"] == "cpu"
    assert ctx["test"] == plain["test"] and ctx["valid"] == plain["valid"]


def test_sparse_adjacency_apply_moves_structure_and_transpose():
    a = SparseAdjacency.from_edges(torch.tensor([0, 1, 1]), torch.tensor([1, 0, 2]), torch.tensor([1., 2., 3.]),
                                   (2, 3))
    a.csr_t()                                              # builds the cached transpose structure
    b = a.map_tensors(lambda t: t.clone())
    old = {t.data_ptr() for t in a.tensors()}
    assert len(b.tensors()) == len(a.tensors()) and not old & {t.data_ptr() for t in b.tensors()}
    x = torch.arange(6.).reshape(3, 2)
    torch.testing.assert_close(b @ x, a @ x)
    torch.testing.assert_close(b.to_dense(), torch.tensor([[0., 1., 0.], [2., 0., 3.]]))


def test_device_option():
    assert resolve_device(None) == "cpu" and resolve_device("CPU") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(UserError, match="only cpu and cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="sees no CUDA GPU"):
            load_config("bprmf", "ml-100k", None, {"device": "cuda"})
    # a GPU run is another run (its floats differ from the CPU's)
    cfg = load_config("bprmf", "ml-100k")
    assert cfg["device"] == "cpu"
    assert config_hash(cfg | {"device": "cuda"}) != config_hash(cfg)
    assert get_model_class("bprmf")


def test_every_registered_model_is_checked():
    from multikg4rec.models import MODELS
    assert set(SMALL) == set(MODELS), "add the new model to SMALL: its tensors must move with model.to(device)"
