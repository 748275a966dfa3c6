"""Per-class loss weights given by name (loss.class_weights=median_frequency, focal loss.alpha=enet), turned into
numbers from the training split once per run and recorded in its config."""

import logging

from deeplab.data import SegmentationDataset
from deeplab.data.statistics import class_pixels
from deeplab.engine.distributed import DistInfo, broadcast_object
from deeplab.losses import CLASS_WEIGHTINGS

log = logging.getLogger("deeplab.train")


def loss_options(config: dict, train_set: SegmentationDataset, world: DistInfo) -> dict:
    """The loss section with per-class weights given by name (loss.class_weights=median_frequency, or focal
    loss.alpha) turned into numbers from the training split's masks (counted by rank 0, cached per split), and
    recorded in `config["class_weights"]`, so the checkpoint shows them and a resumed run keeps them as they were."""
    options = dict(config["loss"])
    key = next((k for k in ("class_weights", "alpha") if isinstance(options.get(k), str)), None)
    if key is None:
        return options
    record = config.get("class_weights")
    if not record or record.get("method") != options[key]:
        pixels, present = broadcast_object(class_pixels(train_set) if world.is_main else None)
        weights = CLASS_WEIGHTINGS[options[key]](pixels, present)
        record = {"key": f"loss.{key}", "method": options[key], "split": config["dataset"]["train_split"],
                  "weights": [round(float(w), 6) for w in weights],
                  "pixel_share": [round(float(p), 6) for p in pixels / max(int(pixels.sum()), 1)]}
        config["class_weights"] = record
        names = config["dataset"].get("class_names") or [str(i) for i in range(len(weights))]
        log.info("loss.%s=%s from split '%s' (%d masks): %s", key, options[key], record["split"], len(train_set),
                 "  ".join(f"{n} {w:.3g}" for n, w in zip(names, record["weights"])))
        absent = [n for n, p in zip(names, pixels) if p == 0]
        if absent:
            log.warning("loss.%s: %d class(es) have no pixels in split '%s' and get weight 0 (%s); check "
                        "dataset.num_classes and the masks", key, len(absent), record["split"], ", ".join(absent[:5]))
    options[key] = record["weights"]
    return options
