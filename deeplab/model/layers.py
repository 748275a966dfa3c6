"""Conv + BatchNorm + ReLU building blocks shared by the ASPP and the decoder."""

from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """A dense conv (no bias: BatchNorm follows) + BN + ReLU, padded to keep the spatial size."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv3x3_bn_relu(in_channels: int, out_channels: int, *, dilation: int = 1,
                    separable: bool = False) -> nn.Sequential:
    """The 3x3 conv block of the head: dense, or depthwise-separable (depthwise 3x3 + BN + ReLU, then pointwise 1x1 +
    BN + ReLU: the TF DeepLab / mmseg separable conv)."""
    if not separable:
        return conv_bn_relu(in_channels, out_channels, 3, dilation)
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        *conv_bn_relu(in_channels, out_channels, 1),
    )


def conv_and_rest(block: nn.Sequential) -> tuple[nn.Conv2d, nn.Sequential]:
    """A dense `conv_bn_relu` / `conv3x3_bn_relu` block split into its conv and the layers after it (BN, ReLU), for
    code that runs the conv its own way (`fast_convs`) and the rest as they are."""
    conv, rest = block[0], block[1:]
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise TypeError(f"expected a dense conv block, got {type(conv).__name__} first")
    return conv, rest


def init_head(module: nn.Module) -> None:
    """He init for the head's convs (they are followed by ReLU), unit/zero BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
