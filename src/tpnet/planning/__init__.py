"""Experiment planning (nnU-Net's central idea): a dataset's fingerprint -> one plan of spacing, patch size,
network depth, batch size, normalisation and foreground sampling, fixed once per dataset."""
