"""tpnet: trigger-point segmentation and detection in ultrasound + shear-wave elastography."""

__version__ = "0.1.0"
