"""The architecture description's separable convolutions and pooling modes (``nas_cli/models/arch.py``): shapes,
parameters counted by hand, values, and descriptions written before them kept as they were."""

from __future__ import annotations

import pytest
import torch

from nas_cli.errors import UserError
from nas_cli.models.arch import ArchNet, canonical, check_layers, describe, key, pool_size
from nas_cli.models.rl_child import RLChild

CONV = {"type": "conv", "filters": 4, "kh": 3, "kw": 3, "sh": 1, "sw": 1}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_separable_conv_shape_and_parameters():
    arch = [{**CONV, "inputs": []}, {"type": "sep", "filters": 6, "kh": 5, "kw": 3, "inputs": [0]}]
    net = ArchNet(arch, (2, 7, 9), 10)
    sep = net.layers[1]
    # depthwise: one 5x3 filter per input channel (4), pointwise 4 -> 6, BatchNorm's weight and bias (6 each)
    assert n_params(sep) == 4 * 5 * 3 + 4 * 6 + 2 * 6
    assert sep[0].groups == 4 and sep[0].bias is None and sep[1].kernel_size == (1, 1)
    assert sep(torch.randn(2, 4, 7, 9)).shape == (2, 6, 7, 9)  # same padding, stride 1
    # the whole child: stem 2*3*3*4 + BN 8, the separable layer, the classifier 6*10 + 10
    assert n_params(net) == 2 * 9 * 4 + 8 + (60 + 24 + 12) + 6 * 10 + 10
    assert describe(arch) == "C3x3/1x1:4 | S5x3:6"


def test_same_padded_pools_keep_the_side_and_ignore_the_padding():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9
    avg = ArchNet([{"type": "pool", "kernel": 3, "stride": 1, "mode": "avg", "padding": "same"}], (1, 3, 3), 2)
    out = avg.layers[0](x)
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 0, 0] == pytest.approx((1 + 2 + 4 + 5) / 4)  # the corner: the mean of its 4 pixels
    assert out[0, 0, 0, 1] == pytest.approx((1 + 2 + 3 + 4 + 5 + 6) / 6)
    assert out[0, 0, 1, 1] == pytest.approx(5.0)
    most = ArchNet([{"type": "pool", "kernel": 3, "stride": 1, "padding": "same"}], (1, 3, 3), 2)
    assert torch.equal(most.layers[0](-x)[0, 0], -torch.tensor([[1.0, 1, 2], [1, 1, 2], [4, 4, 5]]))  # not 0
    strided = ArchNet([{"type": "pool", "kernel": 3, "stride": 2, "mode": "avg", "padding": "same"}], (1, 5, 4), 2)
    assert strided.layers[0](torch.randn(1, 1, 5, 4)).shape == (1, 1, 3, 2) and pool_size(5, 3, 2, "same") == 3
    assert n_params(avg.layers[0]) == 0


def test_valid_average_pool_and_old_pools_unchanged():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    avg = ArchNet([{"type": "pool", "kernel": 2, "stride": 2, "mode": "avg"}], (1, 4, 4), 2).layers[0]
    assert torch.equal(avg(x)[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    old = [{**CONV, "inputs": []}, {"type": "pool", "kernel": 3, "stride": 2, "inputs": [0]}]
    # a max, valid pool written before the keys existed, or with them at their defaults: one description
    assert key(old) == (
        '[{"type":"conv","filters":4,"kh":3,"kw":3,"sh":1,"sw":1,"inputs":[]},'
        '{"type":"pool","kernel":3,"stride":2,"inputs":[0]}]'
    )
    assert canonical([old[0], {**old[1], "mode": "max", "padding": "valid"}]) == canonical(old)
    assert describe(old) == "C3x3/1x1:4 | P3/2"
    assert describe([{"type": "pool", "kernel": 3, "stride": 1, "mode": "avg", "padding": "same"}]) == "AP3/1(same)"


def test_bad_pool_options_are_one_line_errors():
    with pytest.raises(UserError, match=r"\[0\]\.mode is \"min\": use max or avg"):
        check_layers([{"type": "pool", "kernel": 3, "stride": 1, "mode": "min"}], "model.arch=a.json", "")
    with pytest.raises(UserError, match="padding 'full' is not one of valid, same"):
        canonical([{"type": "pool", "kernel": 3, "stride": 1, "padding": "full"}])
    with pytest.raises(UserError, match="a sep layer needs 'kw'"):
        check_layers([{"type": "sep", "filters": 3, "kh": 3}])


def test_rl_child_retrains_the_new_kinds():
    arch = [
        {**CONV, "inputs": []},
        {"type": "sep", "filters": 4, "kh": 3, "kw": 3, "inputs": [0]},
        {"type": "pool", "kernel": 3, "stride": 1, "mode": "avg", "padding": "same", "inputs": [1]},
        {"type": "conv", "filters": 4, "kh": 1, "kw": 1, "sh": 1, "sw": 1, "inputs": [0, 2]},
    ]
    model = RLChild((1, 8, 8), 10, arch=arch)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10) and model.dangling == [3]
