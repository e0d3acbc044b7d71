"""Decoding, views and the frozen backbones of stage one (knows nothing of HDF5)."""
