"""Backbones: `edge` (for CPU and tract) and `efficientnetv2` (the paper's, via timm, for GPUs).

Why the edge net looks the way it does (see /work/shared/notes/tract-speed.md
and docs/training.md for numbers):

* tract runs plain dense 3x3 convolutions at ~35 GFLOP/s on the 2-core edge
  box and depthwise/MobileNet-style blocks relatively worse, so the net is
  only conv3x3 + BatchNorm (folded into the conv at export) + ReLU, strided
  convs for downsampling, a global average pool and one linear layer. No
  residual adds, no squeeze-excite, no depthwise convs: every op is one tract
  runs fast and ORT quantizes cleanly.
* The first conv runs at full resolution with few channels (cheap with one
  input channel) so the finest pixel statistics (roughness, noise grain)
  reach the features before any downsampling.
* Four stride-2 stages give a receptive field of ~100 model pixels
  (2 mm at 21.2 um/px), enough for textures with periods of 50-330 um
  (2.4-16 px), and the global pool makes the features texture statistics
  that do not care where in the ROI a feature sits.
* ``pool="avgstd"`` adds the per-channel standard deviation to the pooled
  vector (second-order texture statistics, cheap: ReduceMean, Mul, Sub, Sqrt).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

EDGE_DEFAULT = {"widths": [16, 32, 64, 96, 128], "depths": [1, 2, 2, 2, 2], "pool": "avg"}


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold BatchNorm into the conv (inference only): one conv instead of conv + affine."""
        if isinstance(self.bn, nn.Identity):
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, bias=True)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
        self.conv, self.bn = fused, nn.Identity()


class EdgeNet(nn.Module):
    """Plain conv net. `widths[i]`/`depths[i]`: channels and convs of stage i.

    Stage 0 is the stem (stride 1 at full resolution, or `stem_stride` 2: a
    learned downsampling of native-resolution pixels, which keeps fine detail a
    box filter would average away, e.g. a projector grid near 2 px); every
    later stage starts with a stride-2 conv.
    """

    def __init__(self, num_classes: int, channels: int = 1, widths=None, depths=None,
                 pool: str = "avg", dropout: float = 0.1, stem_stride: int = 1):
        super().__init__()
        widths = list(widths or EDGE_DEFAULT["widths"])
        depths = list(depths or EDGE_DEFAULT["depths"])
        if len(widths) != len(depths):
            raise ValueError("widths and depths must have the same length")
        if pool not in ("avg", "avgstd"):
            raise ValueError(f"pool {pool!r}: avg or avgstd")
        layers = []
        cin = channels
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                layers.append(ConvBNReLU(cin, w, (2 if i > 0 else stem_stride) if j == 0 else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin * (2 if pool == "avgstd" else 1), num_classes)

    def embed(self, x):
        """The pooled vector the head reads (before dropout): the part embedding's per-ROI rows."""
        x = self.features(x)
        m = F.adaptive_avg_pool2d(x, 1).flatten(1)  # exports as GlobalAveragePool
        if self.pool == "avgstd":
            m2 = (x * x).mean(dim=(2, 3))
            s = torch.sqrt(F.relu(m2 - m * m) + 1e-6)
            m = torch.cat([m, s], 1)
        return m

    def forward(self, x):
        return self.head(self.dropout(self.embed(x)))

    def fuse(self) -> "EdgeNet":
        for mod in self.features:
            mod.fuse()
        return self


def build_model(arch: str, num_classes: int, channels: int = 1, pretrained: bool = False,
                **kw) -> nn.Module:
    """`edge` (kw: widths, depths, pool, dropout) or a timm EfficientNetV2 name.

    `efficientnetv2` means timm's `efficientnetv2_rw_m` (the paper's size);
    `tf_efficientnetv2_s` etc. are passed to timm as they are.
    """
    if arch == "edge":
        return EdgeNet(num_classes, channels, **kw)
    name = "efficientnetv2_rw_m" if arch == "efficientnetv2" else arch
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"backbone {arch!r} needs timm (pip install timm)") from e
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=channels)


class WithEmbedding(nn.Module):
    """(logits, embedding) of a model in eval mode: the embedding is the vector its final linear
    layer reads (EdgeNet: the pooled vector before dropout; timm: ``forward_head(pre_logits=True)``),
    the logits that layer applied to it, so both come from one pass (docs/gallery.md)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        if isinstance(m, EdgeNet):
            e = m.embed(x)
            return m.head(m.dropout(e)), e
        e = m.forward_head(m.forward_features(x), pre_logits=True)
        return m.get_classifier()(e), e


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """BN folding before export. EdgeNet folds itself; for timm nets torch.onnx's
    eval-mode export fuses Conv+BatchNormalization as a graph pass."""
    if isinstance(model, EdgeNet):
        model.fuse()
    return model


def flops_per_roi(model: nn.Module, channels: int, roi: int) -> float:
    """Multiply-adds x 2 of conv and linear layers for one ROI (forward)."""
    total = 0.0
    hooks = []

    def conv_hook(m, i, o):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2.0 * o.numel() / o.shape[0] * k

    def lin_hook(m, i, o):
        nonlocal total
        total += 2.0 * m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, channels, roi, roi))
    model.train(was)
    for h in hooks:
        h.remove()
    return total
