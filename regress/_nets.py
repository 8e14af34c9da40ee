"""The torch networks of the bag regressors: attention-MIL (instance or embedding pooling) and HE2RNA's top-k MLP.

``forward(x (B, L, d), mask (B, L))`` returns ``(bag (B, G), attention (B, L, G), logits (B, L, G) | None,
tile (B, L, G) | None)`` on the z-scored target scale; padded tiles (``mask`` false) get no attention.

>>> net = MILNet(6, 2, mode="instance", attention="gated", hidden=8, att_dim=4, dropout=0.0, clamp=None)
>>> mask = torch.tensor([[True, True, False]])
>>> bag, att, logits, tile = net(torch.zeros(1, 3, 6), mask)
>>> tuple(bag.shape), tuple(att.shape), att[0, 2].tolist()
((1, 2), (1, 3, 2), [0.0, 0.0])
"""

from __future__ import annotations

import torch
from torch import nn


class MILNet(nn.Module):
    """Per-tile hidden layer, one attention branch per gene, instance or embedding pooling.

    ``forward(x (B, L, d), mask (B, L))`` → ``(bag (B, G), attention (B, L, G), logits (B, L, G), tile (B, L, G) |
    None)``; everything on the z-scored target scale.

    Tile ``t`` gets ``h_t = act(W x_t + b)``; the attention branch sees ``h_t`` (``dropout_site="head"``) or its
    dropout (``"hidden"``), the prediction head always the dropout. ``pooling="attention"`` weighs the tiles by the
    softmax of the attention logits, ``"mean"`` weighs them equally (the attention branch is then not trained: its
    weights stay as drawn). ``clamp`` bounds the tile predictions and the bag output.
    """

    def __init__(
        self,
        d: int,
        n_genes: int,
        *,
        mode: str,
        attention: str,
        hidden: int,
        att_dim: int,
        dropout: float,
        clamp: float | None,
        activation: str = "relu",
        dropout_site: str = "hidden",
        pooling: str = "attention",
    ):
        super().__init__()
        self.mode, self.gated, self.clamp = mode, attention == "gated", clamp
        self.dropout_site, self.pooling = dropout_site, pooling
        layers = [nn.Linear(d, hidden)] + ([nn.ReLU()] if activation == "relu" else [])
        self.embed = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.att_v = nn.Linear(hidden, att_dim)
        self.att_u = nn.Linear(hidden, att_dim) if self.gated else None
        self.att_w = nn.Linear(att_dim, n_genes)
        if mode == "instance":
            self.tile_head = nn.Linear(hidden, n_genes)  # p_t = w_g · h_t + b_g
        else:  # Ilse et al.: pooled embedding per gene → shared hidden layer → per-gene output
            self.bag_hidden = nn.Sequential(nn.Linear(hidden, att_dim), nn.ReLU(), nn.Dropout(dropout))
            self.bag_w = nn.Parameter(torch.empty(n_genes, att_dim))
            self.bag_b = nn.Parameter(torch.zeros(n_genes))
            nn.init.normal_(self.bag_w, std=att_dim**-0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        h = self.embed(x)  # (B, L, E)
        dropped = self.drop(h)
        g = dropped if self.dropout_site == "hidden" else h
        a = torch.tanh(self.att_v(g))
        if self.att_u is not None:
            a = a * torch.sigmoid(self.att_u(g))
        logits = self.att_w(a).float()  # (B, L, G)
        logits = logits.masked_fill(~mask[..., None], float("-inf"))
        if self.pooling == "attention":
            att = torch.softmax(logits, dim=1)
        else:
            att = (mask[..., None] / mask.sum(dim=1).clamp_min(1)[:, None, None]).expand_as(logits).float()
        if self.mode == "instance":
            tile = self.tile_head(dropped).float()  # (B, L, G)
            if self.clamp is not None:
                tile = tile.clamp(-self.clamp, self.clamp)
            bag = (att * tile.masked_fill(~mask[..., None], 0.0)).sum(dim=1)
        else:
            tile = None
            z = torch.einsum("blg,ble->bge", att.to(dropped.dtype), dropped)  # (B, G, E)
            bag = (self.bag_hidden(z).float() * self.bag_w).sum(-1) + self.bag_b
        if self.clamp is not None:
            bag = bag.clamp(-self.clamp, self.clamp)
        return bag, att, logits, tile


class HE2RNANet(nn.Module):
    """Per-tile MLP; the bag value is the mean of the top-k tile predictions (averaged over ``ks``)."""

    def __init__(self, d: int, n_genes: int, *, hidden: tuple[int, ...], dropout: float, ks: tuple[int, ...]):
        super().__init__()
        layers, prev = [], d
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU(), nn.Dropout(dropout)]
            prev = width
        layers.append(nn.Linear(prev, n_genes))
        self.mlp = nn.Sequential(*layers)
        self.ks = tuple(int(k) for k in ks)
        self.k_train: int | None = None  # set per training step

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        tile = self.mlp(x).float()  # (B, L, G)
        ks = (self.k_train,) if (self.training and self.k_train is not None) else self.ks
        lengths = mask.sum(dim=1)  # (B,)
        filled = tile.masked_fill(~mask[..., None], float("-inf"))
        srt, order = torch.sort(filled, dim=1, descending=True)
        srt = srt.masked_fill(torch.isinf(srt), 0.0)
        csum = torch.cumsum(srt, dim=1)  # (B, L, G)
        L = tile.shape[1]
        bag = torch.zeros(tile.shape[0], tile.shape[2], device=tile.device)
        weight_sorted = torch.zeros_like(tile)
        rank = torch.arange(L, device=tile.device)[None, :, None]
        for k in ks:
            keff = torch.clamp(lengths, max=k).clamp_min(1)  # (B,)
            idx = (keff - 1).view(-1, 1, 1).expand(-1, 1, tile.shape[2])
            bag = bag + csum.gather(1, idx).squeeze(1) / keff[:, None]
            if not self.training:
                weight_sorted = weight_sorted + (rank < keff.view(-1, 1, 1)).float() / keff.view(-1, 1, 1)
        bag = bag / len(ks)
        att = torch.zeros_like(tile).scatter_(1, order, weight_sorted / len(ks))
        return bag, att, None, tile
