"""ConvNCF: outer-product interaction map + CNN.

He, Du, Wang, Tian, Tang, Chua, "Outer Product-based Neural Collaborative
Filtering", IJCAI 2018. With p_u, q_i the d-dimensional embeddings:

    E = p_u q_i^T = p_u (x) q_i                         (d x d interaction map)
    e^(l) = ReLU( conv_{2x2, stride 2}(e^(l-1)) + b_l )  (l = 1..L, L = log2 d; 64 -> 32 -> ... -> 1)
    y(u, i) = w^T g + b,  g = e^(L) (1 x 1 x c)          (prediction layer)
    L = sum -ln sigma( y(u, i) - y(u, j) ) + lambda_1 ||p, q||^2 + lambda_2 ||CNN||^2 + lambda_3 ||w, b||^2

Choices (paper / the authors' release, duxy-me/ConvNCF):

* 6 convolution layers of 32 channels with 2x2 kernels and stride 2 for d = 64
  (``channels``; ``embedding_size`` must be 2^len(channels)).
* A 2x2 stride-2 convolution reads non-overlapping patches, so each layer is
  computed as ONE matrix product over patches: rows are the map positions in Morton
  (Z) order, so the 4 children of every next-layer position are 4 consecutive rows
  and the next layer's patch matrix is a free reshape (no im2col copy). The weight
  ``W_l`` of shape (4 C_in, C_out) holds the conv kernel ``K[o, c, dr, dc]`` at
  ``W_l[(2 dr + dc) C_in + c, o]``; tests check it against ``F.conv2d``.
* fp32 training computes layers 1-2 in ``_FirstTwoLayers``: the step's two largest tensors, the first
  layer's activation e^(1) and its gradient (N d^2 / 4 x c_1 floats each), live in buffers reused by every
  step (``_Workspace``) instead of being allocated afresh; the same products as autograd's, so the same
  gradients bit for bit (why: ``bench/results/convncf_memory.md``). ``ConvNCF.TRAIN_WORKSPACE = False``
  restores plain autograd.
* ``flush_denormal: true`` in ``convncf.yaml`` (``multikg4rec.runtime.flush_denormal``): training fills
  steps with denormal floats (products of two tiny embedding entries, vanishing gradients), which x86 CPUs
  compute on a slow path (why: ``bench/results/convncf_memory.md``).
* ``ConvNCF.TRAIN_BLOCK`` (class attribute, default None: off): training computes layers
  1-2 in blocks of that many first-layer floats and recomputes layer 1 in the backward
  pass: the same gradients without ever holding the whole first-layer activation, at
  one more first-layer product per step; opt-in (e.g. ``1 << 23``; the workspace's
  peak is about as low, bench/results/convncf_memory.md).
* ``precision: bf16`` (default ``fp32``): mixed-precision TRAINING. In training mode the CNN's matrix
  products run under ``torch.autocast`` in bfloat16 (bfloat16 inputs, fp32 accumulation, activations stored
  in bfloat16); the parameters (and Adam's state), the interaction map E, the prediction layer y = w^T g + b
  and the loss stay fp32. Evaluation (``model.eval()``) always scores in fp32: a bfloat16 full ranking is
  no faster (its first layer, a K = 4 product, is bound by memory, not arithmetic) and its scores move
  the top-20 lists (why, and bf16 training's time, memory and accuracy:
  ``bench/results/convncf_precision.md``). ``TRAIN_BLOCK`` applies to fp32 only.
* Embeddings are initialised from BPR-MF, as the paper: ``pretrain_path`` names a
  BPR-MF run directory (its ``best_model.pt``) or the file itself; the sizes must
  match. ``auto`` (the default) takes the BPR-MF run of the same dataset, data
  config, seed and ``output_dir`` (``pretrained.bprmf_run_dir``: the directory
  ``multikg4rec train --model bprmf`` with those settings writes; ``reproduce table2``
  trains it first). Without it the embeddings start from N(0, 0.01) (the release's init) and a
  warning says so; no in-model BPR-MF warm start is run.
* Regularisation on the release's scale, divided by its batch size 512 (the release
  sums the loss over the batch, the trainer averages it): ``reg_weight`` = 2 x 0.01
  on the batch's embeddings (``l2_reg`` halves the squares), ``conv_reg_weight`` = 1 /
  512 on the CNN weights and biases, ``fc_reg_weight`` = (10 + 1) / 512 on w, b.
* Conv weights / prediction layer: truncated N(0, 0.1), conv biases 0.1 (the release).
  Dropout on g: ``dropout`` (the release: keep-probability 1, i.e. none).
* The release trains with Adagrad (lr 0.05); the trainer uses Adam.

Cost: about 3 MFLOP per (user, item) pair for d = 64, which full ranking pays for
every pair (943 x 1,574 on ml-100k; 6,040 x 3,706 on ml-1m); ``full_sort_predict``
runs it in chunks of pairs sized to stay in cache-friendly blocks. The paper
evaluates on 999 sampled negatives per user instead.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .base import Recommender
from .pretrained import bprmf_embeddings, bprmf_prerequisites

log = logging.getLogger(__name__)


def morton_patch_index(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (a) and columns (b) of the d x d map read by the first layer, in the order
    (first-layer position in Morton order, child j = 2 dr + dc): two ((d/2)^2 * 4,) int64.

    Morton order of (a', b'), each log2(d/2) bits: code = sum_k (2 a'_k + b'_k) 4^k,
    so the lowest two bits of a position are its child index in the next layer.
    """
    half = d // 2
    bits = int(math.log2(half)) if half > 1 else 0
    code = torch.arange(half * half)
    a = torch.zeros_like(code)
    b = torch.zeros_like(code)
    for k in range(bits):
        a |= ((code >> (2 * k + 1)) & 1) << k
        b |= ((code >> (2 * k)) & 1) << k
    j = torch.arange(4)
    rows = (2 * a[:, None] + j[None, :] // 2).reshape(-1)
    cols = (2 * b[:, None] + j[None, :] % 2).reshape(-1)
    return rows, cols


def _relu_grad_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """ReLU's backward pass in place: grad *= [out > 0], with autograd's own kernel (threshold_backward writing
    into grad): one pass and no mask tensor, unlike ``grad.masked_fill_(out <= 0, 0)``."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


class _Workspace:
    """Buffers that outlive a training step: e^(1) and its gradient (N d^2 / 4 x c_1 floats each),
    allocated once and reused by every step (a smaller last batch uses a prefix), so a step allocates no
    first-layer-sized tensor. ``token`` counts forward passes: a backward pass whose forward was not the last
    one (its e^(1) overwritten since) raises instead of computing wrong gradients."""

    def __init__(self):
        self.bufs: dict[str, torch.Tensor] = {}
        self.token = 0

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            self.bufs.pop(name, None)                                   # freed before the larger one exists
            buf = self.bufs[name] = like.new_empty(n)
        return buf[:n].view(shape)


class _FirstTwoLayers(torch.autograd.Function):
    """conv_2(e^(1)) + b_2 with e^(1) = ReLU(conv_1(E) + b_1), both as matrix products over patches, with
    autograd's gradients (ReLU' = [e^(1) > 0]) but control over the step's largest tensors, e^(1) and its
    gradient (N d^2 / 4 x c_1 floats each), in one of two ways:

    * ``ws`` (a :class:`_Workspace`, the default in fp32 training): whole layers, e^(1) and its gradient
      written into buffers kept across steps (``out=``, ReLU's gradient in place) instead of allocated afresh
      at each step (two first-layer-sized allocations fewer per step, and no heap growth from them); the same
      products as autograd's, so the same gradients bit for bit (tests).
    * ``rows`` (``ConvNCF.TRAIN_BLOCK``): blocks of ``rows`` first-layer positions; e^(1) never exists whole:
      each block is computed, used and dropped, and recomputed block by block in the backward pass from E
      (4x smaller), with ReLU's gradient in place. Costs one more first-layer product (4 multiply-adds
      per e^(1) entry, an eighth of layer 2's). Only the weight gradients' sums over blocks change order."""

    @staticmethod
    def forward(ctx, x0, w1, b1, w2, b2, rows, ws):
        ctx.save_for_backward(x0, w1, b1, w2)
        ctx.rows, ctx.ws = rows, ws
        if ws is not None:                                              # whole layers, e^(1) in the workspace
            x1 = torch.addmm(b1, x0, w1, out=ws.get("e1", (x0.shape[0], w1.shape[1]), x0)).relu_()
            ws.token += 1
            ctx.e1, ctx.token = x1, ws.token
            return torch.addmm(b2, x1.view(-1, w2.shape[0]), w2)
        y2 = x0.new_empty(x0.shape[0] // 4, w2.shape[1])
        for s in range(0, x0.shape[0], rows):                           # rows % 4 == 0: whole layer-2 patches
            x1 = torch.addmm(b1, x0[s:s + rows], w1).relu_()
            torch.addmm(b2, x1.view(-1, w2.shape[0]), w2, out=y2[s // 4:(s + rows) // 4])
        return y2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g2):
        x0, w1, b1, w2 = ctx.saved_tensors
        if ctx.ws is not None:
            if ctx.ws.token != ctx.token:
                raise RuntimeError("convncf: another forward pass reused the first layer's workspace before this "
                                   "backward pass; run backward after each training forward pass (or set "
                                   "ConvNCF.TRAIN_WORKSPACE = False)")
            x1 = ctx.e1
            g1 = torch.mm(g2, w2.t(), out=ctx.ws.get("g1", (g2.shape[0], w2.shape[0]), g2)).view(x1.shape)
            _relu_grad_(g1, x1)
            ctx.e1 = None
            return (g1.mm(w1.t()), x0.t().mm(g1), g1.sum(0), x1.view(-1, w2.shape[0]).t().mm(g2), g2.sum(0),
                    None, None)
        gx0, gw1, gw2 = torch.empty_like(x0), torch.zeros_like(w1), torch.zeros_like(w2)
        gb1 = torch.zeros_like(b1)
        for s in range(0, x0.shape[0], ctx.rows):
            x1 = torch.addmm(b1, x0[s:s + ctx.rows], w1).relu_()        # this block of e^(1) again
            g2s = g2[s // 4:(s + ctx.rows) // 4]
            gw2.addmm_(x1.view(-1, w2.shape[0]).t(), g2s)
            g1 = g2s.mm(w2.t()).view(-1, w1.shape[1])
            _relu_grad_(g1, x1)
            gw1.addmm_(x0[s:s + ctx.rows].t(), g1)
            gb1 += g1.sum(0)
            torch.mm(g1, w1.t(), out=gx0[s:s + ctx.rows])
        return gx0, gw1, gb1, gw2, g2.sum(0), None, None


class ConvNCF(Recommender):
    name = "convncf"
    prerequisites = classmethod(lambda cls, config: bprmf_prerequisites(config))   # its BPR-MF start

    #: floats of first-layer activations per chunk of pairs in full_sort_predict
    EVAL_BLOCK = 1 << 19
    #: floats of first-layer activations per block in a training step (_FirstTwoLayers); None: whole layers
    TRAIN_BLOCK: int | None = None
    #: fp32 training with whole layers keeps e^(1) and its gradient in buffers reused by every step
    #: (_Workspace); False: plain autograd, which allocates them afresh at each step
    TRAIN_WORKSPACE: bool = True

    def __init__(self, dataset, config):
        super().__init__(dataset, config)
        d = int(config["embedding_size"])
        channels = [int(c) for c in config["channels"]]
        if d != 2 ** len(channels):
            raise UserError(f"convncf: embedding_size {d} must be 2^len(channels) = {2 ** len(channels)} "
                            f"(each 2x2 stride-2 layer halves the {d} x {d} map down to 1 x 1)")
        self.dim, self.channels = d, channels
        self.reg_weight = float(config["reg_weight"])
        self.conv_reg_weight = float(config["conv_reg_weight"])
        self.fc_reg_weight = float(config["fc_reg_weight"])
        self.user_emb = nn.Embedding(self.n_users, d)
        self.item_emb = nn.Embedding(self.n_items, d)
        nn.init.trunc_normal_(self.user_emb.weight, std=0.01)
        nn.init.trunc_normal_(self.item_emb.weight, std=0.01)
        sizes = [1] + channels
        # W_l: (4 c_in, c_out), one 2x2 stride-2 conv as a matrix over patches
        self.conv_weights = nn.ParameterList(nn.Parameter(torch.empty(4 * sizes[k], sizes[k + 1]))
                                             for k in range(len(channels)))
        self.conv_biases = nn.ParameterList(nn.Parameter(torch.full((sizes[k + 1],), 0.1))
                                            for k in range(len(channels)))
        for w in self.conv_weights:
            nn.init.trunc_normal_(w, std=0.1)
        self.predict = nn.Linear(channels[-1], 1)
        nn.init.trunc_normal_(self.predict.weight, std=0.1)
        nn.init.trunc_normal_(self.predict.bias, std=0.1)
        self.dropout = nn.Dropout(float(config["dropout"]))
        precision = str(config.get("precision") or "fp32")
        if precision not in ("fp32", "bf16"):
            raise UserError(f"convncf: precision must be fp32 or bf16, got {precision!r}")
        self.bf16 = precision == "bf16"
        self._workspace = _Workspace()
        rows, cols = morton_patch_index(d)
        self.register_buffer("patch_rows", rows, persistent=False)
        self.register_buffer("patch_cols", cols, persistent=False)
        if config.get("pretrain_path"):
            path = config["pretrain_path"]
            self.load_pretrained(path)
        else:
            log.warning("convncf: no pretrain_path: embeddings start at random (the paper initialises them "
                        "from BPR-MF; train `bprmf` first and pass its run directory)")

    def train(self, mode: bool = True):
        if not mode:
            self._workspace = _Workspace()                              # evaluation does not need its buffers
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._workspace = _Workspace()          # a cache: the next step allocates it where the model now is
        return super()._apply(fn, *args, **kwargs)

    def load_pretrained(self, path) -> None:
        """Copy user/item embeddings from a BPR-MF ``best_model.pt`` (or its run directory)."""
        u, i = bprmf_embeddings({**self.config, "pretrain_path": path}, self.user_emb.weight.shape,
                                self.item_emb.weight.shape)
        with torch.no_grad():
            self.user_emb.weight.copy_(u)
            self.item_emb.weight.copy_(i)
        log.info("convncf: embeddings initialised from %s", path)

    def interaction_map(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """E = p q^T as the first layer's patch matrix: p, q (N, d) -> (N, (d/2)^2, 4)."""
        return (p[:, self.patch_rows] * q[:, self.patch_cols]).view(p.shape[0], -1, 4)

    def score_pairs(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """y for each (p[n], q[n]) -> (N,)."""
        return self.score_maps(self.interaction_map(p, q))              # E = p (x) q

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """y from interaction maps in patch layout, (N, (d/2)^2, 4) -> (N,)."""
        n = x.shape[0]
        layers = list(zip(self.conv_weights, self.conv_biases))
        if ((self.TRAIN_BLOCK or self.TRAIN_WORKSPACE) and not self.bf16 and torch.is_grad_enabled()
                and len(layers) > 1):
            (w1, b1), (w2, b2) = layers[:2]                             # layers 1-2, e^(1) in blocks or reused
            rows = max(4, self.TRAIN_BLOCK // w1.shape[1] // 4 * 4) if self.TRAIN_BLOCK else None
            x = _FirstTwoLayers.apply(x.reshape(-1, w1.shape[0]), w1, b1, w2, b2, rows,
                                      None if rows else self._workspace).relu_()
            layers = layers[2:]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16 and self.training):
            for w, b in layers:
                x = torch.addmm(b, x.reshape(-1, w.shape[0]), w).relu_()    # e^(l) = ReLU(conv(e^(l-1)) + b_l)
        g = self.dropout(x.view(n, -1).float())                         # (N, c_L): the 1 x 1 x c map
        return self.predict(g).squeeze(-1)                              # y = w^T g + b (fp32)

    def calculate_loss(self, batch):
        p = self.user_emb(batch["users"])
        qi, qj = self.item_emb(batch["pos_items"]), self.item_emb(batch["neg_items"])
        y = self.score_pairs(torch.cat([p, p]), torch.cat([qi, qj]))
        y_pos, y_neg = y.chunk(2)
        bpr = -F.logsigmoid(y_pos - y_neg).mean()
        conv = sum(w.pow(2).sum() + b.pow(2).sum() for w, b in zip(self.conv_weights, self.conv_biases))
        fc = self.predict.weight.pow(2).sum() + self.predict.bias.pow(2).sum()
        return (bpr + self.reg_weight * self.l2_reg(p, qi, qj) + self.conv_reg_weight * conv
                + self.fc_reg_weight * fc)

    def full_sort_predict(self, users):
        """(len(users), n_items): every (user, item) pair through the CNN, in chunks of pairs."""
        p, q = self.user_emb(users), self.item_emb.weight
        # each factor of E = p (x) q in patch layout, once per call: a chunk then multiplies whole rows
        # instead of gathering 2 d^2 scattered entries per pair, for n_items x d^2 more floats
        # (why: bench/results/convncf_eval.md)
        pr = p[:, self.patch_rows].view(len(users), -1, 4)
        qc = q[:, self.patch_cols].view(self.n_items, -1, 4)
        n_pairs = len(users) * self.n_items
        chunk = max(1, self.EVAL_BLOCK // ((self.dim // 2) ** 2 * self.channels[0]))
        out = torch.empty(n_pairs, dtype=p.dtype, device=p.device)
        for s in range(0, n_pairs, chunk):
            r = torch.arange(s, min(s + chunk, n_pairs), device=p.device)
            out[s:s + chunk] = self.score_maps(pr[r // self.n_items] * qc[r % self.n_items])
        return out.view(len(users), self.n_items)
