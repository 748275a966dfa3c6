"""A peer repository's own evaluation, run from its own code outside this project (none of it is copied here):
`python tests/peer_eval.py PROTOCOL PEER_DIR VOC_PARENT WEIGHTS OUT_DIR` prints `PEER_MIOU <float>` as its last line.

PROTOCOL: vainf_full / vainf (VainF/DeepLabV3Plus-Pytorch: its main.get_dataset for voc, --crop_val off / on, its
main.validate, StreamSegMetrics, on deeplabv3plus_mobilenet loaded from WEIGHTS, a {"model_state": ...} file) or
bubbliiiing (bubbliiiing/deeplabv3-plus-pytorch: DeeplabV3.get_miou_png on each val image, saved as get_miou.py saves
it, then utils_metrics.compute_mIoU, on DeepLab(backbone="mobilenet") loaded from WEIGHTS, a state dict).
VOC_PARENT holds VOCdevkit/VOC2012. Run in its own process: the peers' module names (utils, network, datasets, nets,
deeplab) would shadow this project's. Stand-ins for what the code path imports and never calls: visdom and sklearn
(VainF), numpy's removed np.int alias (bubbliiiing's compute_mIoU returns its matrix as np.int).
"""

import argparse
import os
import sys
import types

import numpy as np
import torch

protocol, peer, parent, weights, out = sys.argv[1:6]
sys.path.insert(0, peer)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
voc = os.path.join(parent, "VOCdevkit", "VOC2012")

if protocol in ("vainf_full", "vainf"):
    sys.modules["visdom"] = types.SimpleNamespace(Visdom=object)
    sys.modules["sklearn"] = types.ModuleType("sklearn")
    sys.modules["sklearn.metrics"] = types.SimpleNamespace(confusion_matrix=None)
    import main  # noqa: E402  VainF's main.py
    import network  # noqa: E402
    from metrics import StreamSegMetrics  # noqa: E402
    from torch.utils import data  # noqa: E402

    opts = argparse.Namespace(dataset="voc", data_root=parent, year="2012", crop_val=protocol == "vainf",
                              crop_size=513, download=False, save_val_results=False)
    _, val_dst = main.get_dataset(opts)
    loader = data.DataLoader(val_dst, batch_size=4 if opts.crop_val else 1, shuffle=True, num_workers=0)
    model = network.modeling.deeplabv3plus_mobilenet(num_classes=21, output_stride=16, pretrained_backbone=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["model_state"])
    score, _ = main.validate(opts, model.eval(), loader, torch.device("cpu"), StreamSegMetrics(21))
    miou = score["Mean IoU"]
elif protocol == "bubbliiiing":
    np.int = int
    from PIL import Image  # noqa: E402
    from deeplab import DeeplabV3  # noqa: E402  bubbliiiing's deeplab.py
    from nets.deeplabv3_plus import DeepLab  # noqa: E402
    from utils.utils_metrics import compute_mIoU  # noqa: E402

    net = DeepLab(num_classes=21, backbone="mobilenet", downsample_factor=16, pretrained=False)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    predictor = DeeplabV3.__new__(DeeplabV3)  # its __init__ loads its own model_data file; these are what it sets
    predictor.net, predictor.input_shape, predictor.cuda = net.eval(), [512, 512], False
    ids = open(os.path.join(voc, "ImageSets/Segmentation/val.txt")).read().splitlines()
    os.makedirs(out, exist_ok=True)
    for image_id in ids:  # get_miou.py's loop
        image = Image.open(os.path.join(voc, "JPEGImages", image_id + ".jpg"))
        predictor.get_miou_png(image).save(os.path.join(out, image_id + ".png"))
    _, ious, _, _ = compute_mIoU(os.path.join(voc, "SegmentationClass/"), out, ids, 21, None)
    miou = np.nanmean(ious)
else:
    raise SystemExit(f"unknown protocol {protocol}")
print(f"PEER_MIOU {float(miou)!r}")
