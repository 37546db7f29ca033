"""tpnet: trigger-point segmentation and detection in ultrasound + shear-wave elastography."""

__version__ = "0.1.0"

# OpenCV reads its pixel limit once, when cv2 is imported: give it tpnet's frame limit before any tpnet
# module imports cv2 (decompression bombs; see tpnet.core.image_header). Standard library only.
from tpnet.core.image_header import guard_opencv_pixel_limit as _guard_opencv_pixel_limit  # noqa: E402

_guard_opencv_pixel_limit()
