"""Building blocks of every model: layers, one attention for self- and cross-attention, position and
time embeddings (and the NumPy network of Phase 2 · 01). Whole models live in :mod:`course_lib.models`."""
