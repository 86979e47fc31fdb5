"""edgebench converter: the host side (ONNX/PyTorch model -> optimized, checked artifacts)."""
