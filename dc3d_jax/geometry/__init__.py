"""Plain-jnp geometry: hash-grid encoding, primitives, rasterization, tets, mesh ops."""
