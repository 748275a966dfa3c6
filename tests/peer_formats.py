"""The peer repositories' checkpoint formats, built from our own model as the inverse of the conversion: key names,
shapes and conventions are facts of the peers' code (anchored in tests/test_convert.py by key counts and spot shapes
read off the peers' own models). Shared by the conversion tests."""

import torch

from deeplab.model import build_model


VOC = {"format": "voc", "root": "datasets/VOCdevkit/VOC2012", "train_split": "train", "val_split": "val",
       "num_classes": 21, "ignore_index": 255, "class_names": [f"c{i}" for i in range(21)],
       "palette": [[i, i, i] for i in range(21)], "ignore_colour": None, "label_map": None,
       "allow_ignore_only_masks": False, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
VAINF_MODEL = {"backbone": {"name": "mobilenet_v2", "padding": "input"}, "decoder_convs": 1}
BUBBLIIIING_MODEL = {"align_corners": True}


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (as after training), so folding and reordering are really checked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(777)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (0.1 if tensor.dim() < 4 else 0.05))
    return model.eval()


# --- the peers' formats, written out as the inverse of the conversion -----------------------------------------------

def vainf_state(ours: dict) -> dict:
    """VainF's `model_state` for our weights (a decoder_convs=1, padding=input model): its MobileNetV2 is torchvision's
    features split into low_level_features.0-3 and high_level_features.4-17 (a sliced Sequential keeps its indices),
    its head `classifier.*`, and its decoder conv reads [low-level 48, ASPP 256] where ours reads [ASPP, low-level]."""
    head = {"aspp.branches.": "classifier.aspp.convs.", "aspp.project.": "classifier.aspp.project.",
            "decoder.reduce.": "classifier.project.", "decoder.fuse.0.0.": "classifier.classifier.0.",
            "decoder.fuse.0.1.": "classifier.classifier.1.", "decoder.classifier.": "classifier.classifier.3."}
    state = {}
    for key, tensor in ours.items():
        if key.startswith("backbone.features."):
            index = int(key.split(".")[2])
            part = "low_level_features" if index < 4 else "high_level_features"
            theirs = key.replace("backbone.features.", f"backbone.{part}.", 1)
        else:
            prefix = next(p for p in head if key.startswith(p))
            theirs = head[prefix] + key[len(prefix):]
        if key == "decoder.fuse.0.0.weight":
            tensor = torch.cat([tensor[:, 256:], tensor[:, :256]], dim=1)
        state[theirs] = tensor.clone()
    return state


BUBBLIIIING_BLOCK = {"conv.0.0.": "conv.0.", "conv.0.1.": "conv.1.", "conv.1.0.": "conv.3.", "conv.1.1.": "conv.4.",
                     "conv.2.": "conv.6.", "conv.3.": "conv.7."}
BUBBLIIIING_FIRST_BLOCK = {"conv.0.0.": "conv.0.", "conv.0.1.": "conv.1.", "conv.1.": "conv.3.", "conv.2.": "conv.4."}
BUBBLIIIING_HEAD = {"aspp.branches.0.": "aspp.branch1.", "aspp.branches.1.": "aspp.branch2.",
                    "aspp.branches.2.": "aspp.branch3.", "aspp.branches.3.": "aspp.branch4.",
                    "aspp.branches.4.1.": "aspp.branch5_conv.", "aspp.branches.4.2.": "aspp.branch5_bn.",
                    "aspp.project.": "aspp.conv_cat.", "decoder.reduce.": "shortcut_conv.",
                    "decoder.fuse.0.": "cat_conv.", "decoder.fuse.1.0.": "cat_conv.4.",
                    "decoder.fuse.1.1.": "cat_conv.5.", "decoder.classifier.": "cls_conv."}
# its head convs carry a bias before their BN: (its conv, the BN after it)
BUBBLIIIING_BIASED = [("aspp.branch1.0", "aspp.branch1.1"), ("aspp.branch2.0", "aspp.branch2.1"),
                      ("aspp.branch3.0", "aspp.branch3.1"), ("aspp.branch4.0", "aspp.branch4.1"),
                      ("aspp.branch5_conv", "aspp.branch5_bn"), ("aspp.conv_cat.0", "aspp.conv_cat.1"),
                      ("shortcut_conv.0", "shortcut_conv.1"), ("cat_conv.0", "cat_conv.1"),
                      ("cat_conv.4", "cat_conv.5")]


def bubbliiiing_state(ours: dict, seed: int = 1) -> dict:
    """bubbliiiing's state dict for our weights (an align_corners=True model): its MobileNetV2 numbers each block's
    layers in one Sequential, and its head convs have biases; each bias b is drawn at random and its BN's running mean
    raised by b, so the peer model computes what ours does."""
    state = {}
    for key, tensor in ours.items():
        if key.startswith("backbone.features."):
            index, rest = int(key.split(".")[2]), key.split(".", 3)[3]
            table = {} if index == 0 else BUBBLIIIING_FIRST_BLOCK if index == 1 else BUBBLIIIING_BLOCK
            prefix = next((p for p in table if rest.startswith(p)), "")
            theirs = f"backbone.features.{index}.{table.get(prefix, '')}{rest[len(prefix):]}"
        else:
            prefix = max((p for p in BUBBLIIIING_HEAD if key.startswith(p)), key=len)
            theirs = BUBBLIIIING_HEAD[prefix] + key[len(prefix):]  # decoder.fuse.0.0/1 are cat_conv.0/1
        state[theirs] = tensor.clone()
    g = torch.Generator().manual_seed(seed)
    for conv, bn in BUBBLIIIING_BIASED:
        bias = torch.randn(state[f"{conv}.weight"].shape[0], generator=g)
        state[f"{conv}.bias"] = bias
        state[f"{bn}.running_mean"] = state[f"{bn}.running_mean"] + bias
    return dict(sorted(state.items(), key=lambda item: peer_order(item[0])))


def peer_order(key: str):
    """The peer's own key order: backbone, aspp, shortcut, cat, cls (as its modules are registered)."""
    order = ("backbone.", "aspp.", "shortcut_conv.", "cat_conv.", "cls_conv.")
    return next(i for i, p in enumerate(order) if key.startswith(p)), key


def vainf_model() -> torch.nn.Module:
    """A randomised 21-class model in VainF's architecture (one decoder conv, input-padded MobileNetV2)."""
    return randomised(build_model(num_classes=21, **VAINF_MODEL))


def bubbliiiing_model() -> torch.nn.Module:
    """A randomised 21-class model in bubbliiiing's architecture (align_corners resizes)."""
    return randomised(build_model(num_classes=21, **BUBBLIIIING_MODEL), seed=3)
