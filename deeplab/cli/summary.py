"""`python -m deeplab.cli.summary [--backbone resnet101] [--separable] [--size H [W]]`: a model's parameters per
part and its FLOPs at an input size, without building any data or weights."""

import argparse

from deeplab.model import BACKBONES, build_model
from deeplab.model.backbone import backbone_architecture
from deeplab.model.summary import summarize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--backbone", default="mobilenet_v2", choices=list(BACKBONES))
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument("--separable", action="store_true")
    parser.add_argument("--width-mult", type=float, help="mobilenet_v2 only (default 1.0)")
    parser.add_argument("--expand-ratio", type=int, help="mobilenet_v2 only (default 6)")
    parser.add_argument("--size", type=int, nargs="+", default=[513], help="H [W]")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("width_mult", args.width_mult), ("expand_ratio", args.expand_ratio)) if v is not None}
    if options and args.backbone != "mobilenet_v2":
        parser.error(f"--width-mult and --expand-ratio are mobilenet_v2 options, not {args.backbone}'s")
    backbone = backbone_architecture({"name": args.backbone, **options})
    height, width = args.size[0], args.size[-1]
    model = build_model(num_classes=args.num_classes, backbone=backbone, output_stride=args.output_stride,
                        separable=args.separable)
    info = summarize(model, height, width)
    shown = ", ".join(f"{k}={v}" for k, v in backbone.items() if k != "name")
    head = "separable" if args.separable else "dense"
    print(f"DeepLabV3+ {BACKBONES[args.backbone].family}{f' ({shown})' if shown else ''}, {head} head, "
          f"OS{args.output_stride}, {args.num_classes} classes, input {height}x{width}")
    for key in ("backbone", "aspp", "decoder", "total"):
        print(f"  params {key:<9} {info[key]:>12,}")
    print(f"  FLOPs  {info['gflops']:.2f} G  ({info['gmacs']:.2f} G multiply-adds)")


if __name__ == "__main__":
    main()
