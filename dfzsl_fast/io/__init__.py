"""Files in and out, one module per concern; every writer goes through :mod:`.atomic`.

- :mod:`.atomic`: ``atomic_path`` / ``atomic_open`` / ``atomic_write`` (the one atomic writer),
  ``save_json``, ``save_csv``;
- :mod:`.classifiers`: ``save_classifier`` / ``load_classifier`` (``*.safetensors`` heads);
- :mod:`.features`: ``FeatureFile``, ``save_features`` / ``load_features``;
- :mod:`.names`: ``load_names``, ``load_descriptors``;
- :mod:`.provenance`: ``provenance()`` (versions and creation time stored in every file).

Loading never runs code: safetensors, ``.npz`` without pickles, ``torch.load(weights_only=True)``.
"""

from ..hashing import sha256_file
from .atomic import atomic_open, atomic_path, atomic_write, save_csv, save_json, to_jsonable
from .classifiers import CLASSIFIER_FORMAT, load_classifier, load_extended, save_classifier
from .features import FEATURES_FORMAT, FeatureFile, load_features, save_features
from .names import load_descriptors, load_names
from .provenance import provenance

__all__ = [
    "CLASSIFIER_FORMAT",
    "FEATURES_FORMAT",
    "atomic_path",
    "atomic_open",
    "atomic_write",
    "to_jsonable",
    "save_json",
    "save_csv",
    "sha256_file",
    "provenance",
    "save_classifier",
    "load_classifier",
    "load_extended",
    "FeatureFile",
    "save_features",
    "load_features",
    "load_descriptors",
    "load_names",
]
