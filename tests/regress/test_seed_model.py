"""The ``graziani2022`` preset is the seed paper's model (Graziani et al. 2022, ``MIL_model`` in ``code/train.py``):
its forward pass, written here again from the paper's code in plain torch, gives the same outputs with the same
weights; its parameters are the code's; it stops as the code stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slide2expr.regress import GRAZIANI2022, AttentionMILRegressor, PerGeneRegressor, make_model
from tests.regress._data import planted_bags

#: What the seed's code sets, read from ``code/train.py`` (ResNet18 branch, ``TASK='geneExp'``, ``pool='att'``) and
#: ``code/train_all.sh`` (``-e 100``), in slide2expr's parameter names.
SEED_CODE = {
    "hidden_dim": 128,  # self.E = 128: embedding = Linear(fc_input_features, E)
    "attention_dim": 64,  # self.D = 64: attention = Linear(L=E, D) → Tanh → Linear(D, K)
    "activation": "identity",  # nothing between the embedding and the attention / the tile predictor
    "attention": "tanh",  # no gate
    "dropout": 0.2,  # torch.nn.Dropout(p=0.2) on the embedding, before embedding_fc only
    "dropout_site": "head",  # the attention is computed on features_to_return, the un-dropped embedding
    "pooling": "attention",  # softmax over the tiles, (A · p).sum / A.sum
    "clamp": 10.0,  # torch.clamp(output_fcn, -10, 10) and torch.clamp(output_pool, -10, 10)
    "optimizer": "sgd",  # optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay, nesterov=True)
    "lr": 1e-4,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 0.01,
    "batch_size": 1,  # batch_size_bag = 1, a bag holding all its tiles
    "max_tiles": None,
    "tile_fraction": 1.0,
    "max_epochs": 100,  # train_all.sh: -e 100
    "patience": 12,  # EARLY_STOP_NUM = 12
    "min_epochs": 0,  # while epoch < num_epochs and early_stop_cont < EARLY_STOP_NUM: no minimum
    "standardize": False,  # the CNN's features as they come
    "pca_components": None,
    "mode": "instance",  # per-tile predictions weighed by the attention
}


def seed_forward(x, W, b, V, c, w, c2, U, bu, *, p_drop=0.0, mask=None):
    """The seed's ``MIL_model.forward`` for one bag ``x`` (n_tiles, d), one gene, from its description.

    ``mask`` (n_tiles, 128) of 0/1 is the dropout draw in training (None: eval mode)."""
    embedding = x @ W.T + b  # self.embedding, no activation; features_to_return
    dropped = embedding if mask is None else embedding * mask / (1 - p_drop)
    logits = dropped @ U.T + bu  # self.embedding_fc
    output_fcn = torch.clamp(logits, -10, 10)
    A = torch.tanh(embedding @ V.T + c) @ w.T + c2  # self.attention(features_to_return)
    A = torch.softmax(A, dim=0)  # softmax over the tiles
    output_pool = (output_fcn * A).sum(dim=0) / A.sum(dim=0)
    return torch.clamp(output_pool, -10, 10), output_fcn, A


def _preset_network(d: int, seed: int = 0):
    est = AttentionMILRegressor(**GRAZIANI2022)
    torch.manual_seed(seed)
    net = est.build_network(d, 1)
    lin = net.embed[0]
    # large weights so that some tile predictions and bag values reach the clamp
    with torch.no_grad():
        net.tile_head.weight.mul_(40.0)
    weights = (
        lin.weight,
        lin.bias,
        net.att_v.weight,
        net.att_v.bias,
        net.att_w.weight,
        net.att_w.bias,
        net.tile_head.weight,
        net.tile_head.bias,
    )
    return net, [t.detach().clone() for t in weights]


def test_preset_forward_equals_the_seeds_with_the_same_weights():
    d = 24
    net, weights = _preset_network(d)
    net.eval()
    rng = np.random.default_rng(0)
    clamped = 0
    for n in (1, 7, 50):
        x = torch.from_numpy(rng.normal(scale=2.0, size=(n, d)).astype(np.float32))
        with torch.no_grad():
            bag, att, logits, tile = net(x[None], torch.ones(1, n, dtype=torch.bool))
            want_bag, want_tile, want_att = seed_forward(x, *weights)
        torch.testing.assert_close(tile[0], want_tile, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(att[0], want_att, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bag[0], want_bag, rtol=1e-5, atol=1e-5)
        clamped += int((want_tile.abs() >= 10).sum())
    assert clamped > 0  # the clamp of the tile predictions was exercised


def test_preset_dropout_reaches_only_the_tile_predictor():
    d, n = 24, 30
    net, weights = _preset_network(d, seed=1)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(n, d)).astype(np.float32))
    seen = {}
    net.tile_head.register_forward_hook(lambda m, inp, out: seen.update(head_in=inp[0].detach()))
    net.eval()
    with torch.no_grad():
        _, att_eval, _, _ = net(x[None], torch.ones(1, n, dtype=torch.bool))
    net.train()
    torch.manual_seed(3)
    with torch.no_grad():
        bag, att, _, tile = net(x[None], torch.ones(1, n, dtype=torch.bool))
    embedding = x @ weights[0].T + weights[1]
    ratio = (seen["head_in"][0] / embedding).numpy()
    kept = np.isclose(ratio, 1 / 0.8, rtol=1e-4)
    assert (kept | np.isclose(ratio, 0.0)).all() and 0 < (~kept).mean() < 0.5  # dropout 0.2 before the head
    torch.testing.assert_close(att, att_eval)  # the attention saw the un-dropped embedding
    mask = torch.from_numpy(kept.astype(np.float32))
    want_bag, want_tile, _ = seed_forward(x, *weights, p_drop=0.2, mask=mask)
    torch.testing.assert_close(tile[0], want_tile, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bag[0], want_bag, rtol=1e-5, atol=1e-5)


def test_preset_parameters_are_the_seeds_code():
    est = make_model("mil", params={"preset": "graziani2022"}, random_state=0)
    assert isinstance(est, PerGeneRegressor)  # the paper fits one network per gene
    params = est.estimator.get_params()
    assert {k: params[k] for k in SEED_CODE} == SEED_CODE
    assert {k: GRAZIANI2022[k] for k in SEED_CODE} == SEED_CODE
    opt = est.estimator._optimizer_options()
    assert opt == {"name": "sgd", "lr": 1e-4, "weight_decay": 0.01, "momentum": 0.9, "nesterov": True}
    net = est.estimator.build_network(512, 1)  # ResNet18's 512 features
    sizes = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [(512, 128), (128, 64), (64, 1), (128, 1)]
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())


def test_preset_keeps_the_best_validation_epoch_and_stops_after_12_without_a_minimum():
    rng = np.random.default_rng(4)
    bags, y, _ = planted_bags(20, rng, d=8)
    params = {"preset": "graziani2022", "per_gene": False, "device": "cpu", "lr": 0.05, "max_epochs": 60}
    est = make_model("mil", params=params, random_state=0).fit(bags, y, groups=np.arange(20))
    val = np.array([h["val_loss"] for h in est.history_])
    assert est.best_epoch_ == int(np.argmin(val))  # strictly lower losses only: the first minimum
    assert est.n_epochs_ == est.best_epoch_ + 1 + 12 < 60, (est.best_epoch_, est.n_epochs_)
    assert est.n_epochs_ < 24 or est.best_epoch_ >= 11  # no 24-epoch floor: it may stop at epoch 13


@pytest.mark.parametrize("field", ["activation", "dropout_site", "pooling"])
def test_network_choices_are_checked(field):
    est = AttentionMILRegressor(max_epochs=1, **{field: "nope"})
    with pytest.raises(ValueError, match=field):
        est.fit([np.zeros((3, 4), np.float32)] * 2, [0.0, 1.0])
