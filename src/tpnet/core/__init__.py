"""What every tpnet tool shares, and nothing of the tools: the dataset contract, frame I/O, channel encoding and
resampling, prediction with padding, post-processing into trigger points, overlays, the model-file format,
checkpoint reading, device choice and the small file-safety utilities (atomic writes, CSV cells, run locks).

Everything here imports the standard library, numpy, OpenCV, tifffile, PyYAML and torch only, never
``tpnet.data``, ``tpnet.models``, ``tpnet.training``, ``tpnet.evaluation``, ``tpnet.export`` or
``tpnet.inference`` (``tests/test_import_layers.py``): a change made for one tool cannot silently move another.
"""
