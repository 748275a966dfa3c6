"""Model size and cost: `python -m deeplab.model.summary --separable --size 513`."""

import argparse

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deeplab.model.deeplabv3plus import build_model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, height: int, width: int) -> int:
    """FLOPs of one (1, 3, height, width) forward pass, counted by torch (2 per multiply-add)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, height, width))
    model.train(was_training)
    return counter.get_total_flops()


def summarize(model: nn.Module, height: int, width: int) -> dict[str, float]:
    """Parameters per part (backbone, aspp, decoder) and total, and GFLOPs / GMACs at the given size."""
    parts = {name: count_parameters(child) for name, child in model.named_children()}
    flops = count_flops(model, height, width)
    return {**parts, "total": count_parameters(model), "gflops": flops / 1e9, "gmacs": flops / 2e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument("--separable", action="store_true")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--expand-ratio", type=int, default=6)
    parser.add_argument("--size", type=int, nargs="+", default=[513], help="H [W]")
    args = parser.parse_args(argv)
    height, width = args.size[0], args.size[-1]
    model = build_model(num_classes=args.num_classes, output_stride=args.output_stride, separable=args.separable,
                        width_mult=args.width_mult, expand_ratio=args.expand_ratio)
    info = summarize(model, height, width)
    head = "separable" if args.separable else "dense"
    print(f"DeepLabV3+ MobileNetV2 x{args.width_mult} (t={args.expand_ratio}), {head} head, OS{args.output_stride}, "
          f"{args.num_classes} classes, input {height}x{width}")
    for key in ("backbone", "aspp", "decoder", "total"):
        print(f"  params {key:<9} {info[key]:>12,}")
    print(f"  FLOPs  {info['gflops']:.2f} G  ({info['gmacs']:.2f} G multiply-adds)")


if __name__ == "__main__":
    main()
