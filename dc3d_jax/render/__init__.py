"""Volume rendering (NeRF, NeuS) and mesh rasterization behind one API."""
