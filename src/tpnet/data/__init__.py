"""Datasets for training and evaluation: synthetic data, integrity check, splits, augmentation, loaders.

The dataset contract and frame I/O they build on live in ``tpnet.core`` (the clinicians' tool reads them
too). Kept import-free on purpose: importing a submodule must not pull in albumentations through here.
"""
