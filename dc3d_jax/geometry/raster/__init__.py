"""The rasterizer's parts; `geometry/rasterize.py` is the one public API over them.

common.py (RasterOut, pixel conventions) · triangles.py (screen-space setup) · visibility.py
(nearest covering triangle: brute force and tiled) · jax_backend.py · antialias.py ·
topology.py (edge neighbours) · torch_bridge.py · nvdiffrast_backend.py.
"""
