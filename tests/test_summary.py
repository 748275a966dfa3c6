from deeplab.model import build_model
from deeplab.cli.summary import main
from deeplab.model.summary import count_flops, summarize


def test_flops_scale_with_area_and_separable_is_cheaper():
    dense = build_model(num_classes=21)
    small, large = count_flops(dense, 64, 64), count_flops(dense, 128, 128)
    assert 3.5 < large / small < 4.5
    assert count_flops(build_model(num_classes=21, separable=True), 128, 128) < large / 3


def test_summary_parts_add_up(capsys):
    info = summarize(build_model(num_classes=21, separable=True), 65, 65)
    assert info["backbone"] + info["aspp"] + info["decoder"] == info["total"]
    assert info["total"] == sum(p.numel() for p in build_model(num_classes=21, separable=True).parameters())
    # DeepLabV3+ on MobileNetV2 (2.2M parameters without its classifier) with a separable head: 2.5M-3.5M in all
    assert 2.5e6 < info["total"] < 3.5e6
    main(["--separable", "--size", "65", "97"])
    out = capsys.readouterr().out
    assert "separable head" in out and "input 65x97" in out and f"{info['total']:,}" in out
