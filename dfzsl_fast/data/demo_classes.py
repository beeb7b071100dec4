"""Class names and splits the built-in demo can use without ``../shared/data``.

The demo prefers the xlsa17 split files when they are found (``dfzsl_fast.data.shared_data_dir``);
these lists let it run from a plain install too. They are the public class names of the
datasets' standard GZSL "proposed split" (Xian et al., 2018), in the files' class order and
cleaned as the configs do, with the unseen (test) classes of that split.
"""

from __future__ import annotations

__all__ = ["DEMO_SPLITS"]

# name -> (template, all class names in dataset order, unseen class names)
DEMO_SPLITS: dict[str, tuple[str, list[str], list[str]]] = {
    "AWA2": (
        "a photo of a {}, a type of animal.",
        [
            "antelope", "grizzly bear", "killer whale", "beaver", "dalmatian", "persian cat",
            "horse", "german shepherd", "blue whale", "siamese cat", "skunk", "mole", "tiger",
            "hippopotamus", "leopard", "moose", "spider monkey", "humpback whale", "elephant",
            "gorilla", "ox", "fox", "sheep", "seal", "chimpanzee", "hamster", "squirrel",
            "rhinoceros", "rabbit", "bat", "giraffe", "wolf", "chihuahua", "rat", "weasel",
            "otter", "buffalo", "zebra", "giant panda", "deer", "bobcat", "pig", "lion", "mouse",
            "polar bear", "collie", "walrus", "raccoon", "cow", "dolphin",
        ],
        [
            "horse", "blue whale", "sheep", "seal", "bat", "giraffe", "rat", "bobcat", "walrus",
            "dolphin",
        ],
    ),
    "APY": (
        "a photo of a {}.",
        [
            "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
            "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
            "train", "tvmonitor", "donkey", "monkey", "goat", "wolf", "jetski", "zebra",
            "centaur", "mug", "statue", "building", "bag", "carriage",
        ],
        [
            "cow", "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
            "donkey", "goat", "jetski", "statue",
        ],
    ),
}
