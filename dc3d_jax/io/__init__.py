"""Host-side image I/O: loading, resizing, recentering and atomic writers (NumPy/PIL)."""
