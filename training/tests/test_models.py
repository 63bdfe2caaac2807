"""Backbones: the edge net folds its BatchNorm exactly; EfficientNetV2 builds and runs (timm)."""

import pytest
import torch

from amfp_train.models import EdgeNet, build_model, flops_per_roi


@pytest.mark.parametrize("pool", ["avg", "avgstd"])
def test_edge_net_fuse_is_exact(pool):
    torch.manual_seed(0)
    m = EdgeNet(5, 1, [8, 16, 16], [1, 2, 1], pool=pool)
    m.train()
    for _ in range(3):  # give the BN running stats something other than 0/1
        m(torch.randn(8, 1, 40, 40))
    m.eval()
    x = torch.randn(4, 1, 40, 40)
    with torch.no_grad():
        before = m(x)
        m.fuse()
        after = m(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_edge_net_shapes_and_flops():
    m = build_model("edge", 21, 1)
    assert m(torch.zeros(2, 1, 96, 96)).shape == (2, 21)
    g = flops_per_roi(m, 1, 96)
    assert 0.05e9 < g < 1e9


def test_efficientnetv2_builds_and_runs():
    pytest.importorskip("timm")
    m = build_model("efficientnetv2", 4, 3)  # timm efficientnetv2_rw_m, the paper's size
    m.eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
