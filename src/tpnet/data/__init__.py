"""Dataset contract, image I/O, synthetic data, integrity check, loader.

Kept import-free on purpose: the inference path imports ``tpnet.core.io`` and ``tpnet.core.encoding``
and must not pull in albumentations or torchvision through this package.
"""
