"""Is this frame like the ones the model was trained on? (issue #14). PLACEHOLDER wired by the lead: the
inference helper replaces the bodies.

- ``input_reference(encoded_images, channels)``: computed at the end of training from the training split's
  network inputs (``(C, H, W)`` float32, as the network saw them), stored in the model card
  (``meta["model_card"]["input_reference"]``); JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def input_reference(encoded_images: Iterable[np.ndarray], channels: Sequence[str]) -> dict:
    """Summary statistics of the training inputs that ``tpnet-infer`` compares each frame with."""
    return {}
