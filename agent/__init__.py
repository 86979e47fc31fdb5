"""edgebench agent: the device side. Light by design: stdlib, numpy, psutil, paho-mqtt, click and a
runtime (onnxruntime or LiteRT), imported lazily. Never imports onnx, torch, tensorflow or the
collector/converter packages."""

from wire import __version__

__all__ = ["__version__"]
