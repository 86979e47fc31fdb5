"""Calibration / validation data: .npy, .npz or an image folder, checked against the model's inputs.

Formats
- ``.npy``: one array, the inputs of a single-input model (batch first). No labels.
- ``.npz``: inputs under the model's input names, or under ``x``/``inputs``/``input``/``data``/``images``
  for a single-input model; optional integer labels under ``y``/``labels``/``label``/``targets``.
- an image folder ``DIR/<class>/<image>.png|jpg|jpeg|bmp``: classes are the sorted sub-folder names
  (label = index). Preprocessing (documented, deterministic): decode with Pillow, convert to ``L`` when the
  model takes 1 channel else ``RGB``, resize to the model's H x W (bilinear), scale to [0, 1], then
  ``(x - mean) / std`` (per channel, defaults 0 and 1), layout NCHW, or NHWC when the model's last input
  dimension is the channel count (1 or 3) and the second is not.

Float64/float16 inputs are cast to the model's float32; anything else that does not fit (integer data for a
float input, wrong rank or fixed dimension) raises :class:`ConvertError` naming the input and the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter.errors import ConvertError

INPUT_KEYS = ("x", "inputs", "input", "data", "images")
LABEL_KEYS = ("y", "labels", "label", "targets")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | str | None, ...]  # None or a name for dynamic dims
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class Dataset:
    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    classes: tuple[str, ...] = field(default=())

    @property
    def n(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> Dataset:
        return Dataset(
            self.name,
            {k: v[:n] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:n],
            self.classes,
        )

    def batches(self, size: int):
        for start in range(0, self.n, size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}


def _pick(names, keys):
    for key in keys:
        if key in names:
            return key
    return None


def _image_folder(path: Path, specs: list[InputSpec], mean, std) -> Dataset:
    from PIL import Image

    if len(specs) != 1:
        raise ConvertError("an image folder can only feed a single-input model")
    spec = specs[0]
    shape = spec.shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ConvertError(f"an image folder needs a model input [N, C, H, W] or [N, H, W, C]; got {shape}")
    nhwc = shape[3] in (1, 3) and shape[1] not in (1, 3)
    c, h, w = (shape[3], shape[1], shape[2]) if nhwc else (shape[1], shape[2], shape[3])
    classes = tuple(sorted(p.name for p in path.iterdir() if p.is_dir()))
    if not classes:
        raise ConvertError(f"{path}: no class sub-folders (expected DIR/<class>/<image>)")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for img_path in sorted((path / cls).iterdir()):
            if img_path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(img_path) as img:
                    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except OSError as exc:
                raise ConvertError(f"cannot read image {img_path}: {exc}") from None
            arr = arr.reshape(h, w, c)
            arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
            xs.append(arr if nhwc else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise ConvertError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    return Dataset(path.name, {spec.name: np.stack(xs)}, np.asarray(ys, np.int64), classes)


def load_dataset(
    path: str | Path,
    specs: list[InputSpec],
    *,
    mean: tuple[float, ...] = (0.0,),
    std: tuple[float, ...] = (1.0,),
) -> Dataset:
    """Load data for a model with these inputs and check that it fits them (shape, dtype)."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"data not found: {path}")
    if path.is_dir():
        return check_fits(_image_folder(path, specs, mean, std), specs)
    labels = None
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if len(specs) != 1:
                raise ConvertError(f"{path.name}: a .npy feeds one input; the model has {len(specs)}")
            inputs = {specs[0].name: arr}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                names = set(npz.files)
                if all(s.name in names for s in specs):
                    inputs = {s.name: npz[s.name] for s in specs}
                elif len(specs) == 1 and _pick(names, INPUT_KEYS):
                    inputs = {specs[0].name: npz[_pick(names, INPUT_KEYS)]}
                else:
                    want = [s.name for s in specs]
                    raise ConvertError(
                        f"{path.name}: no inputs for {want} (keys: {sorted(names)}; "
                        f"use the input names or one of {INPUT_KEYS})"
                    )
                key = _pick(names, LABEL_KEYS)
                if key:
                    labels = npz[key]
        else:
            raise ConvertError(f"{path.name}: data must be .npy, .npz or an image folder")
    except (ValueError, OSError) as exc:
        raise ConvertError(f"cannot read {path.name}: {exc}") from None
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ConvertError(
                f"{path.name}: labels must be a 1-D integer array, got {labels.dtype}{labels.shape}"
            )
        labels = labels.astype(np.int64)
    return check_fits(Dataset(path.name, inputs, labels), specs)


def check_fits(data: Dataset, specs: list[InputSpec]) -> Dataset:
    """Cast safe float types to the model's dtype; refuse a wrong rank, fixed dim or dtype kind."""
    fixed: dict[str, np.ndarray] = {}
    n = None
    for spec in specs:
        arr = data.inputs[spec.name]
        want = np.dtype(spec.dtype)
        if arr.dtype != want:
            if np.issubdtype(want, np.floating) and np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(want)
            else:
                raise ConvertError(
                    f"{data.name}: input {spec.name!r} is {arr.dtype}, the model wants {want} "
                    f"(convert the data, e.g. scale images to float32)"
                )
        if arr.ndim != len(spec.shape):
            raise ConvertError(
                f"{data.name}: input {spec.name!r} has shape {list(arr.shape)}, the model wants "
                f"{list(spec.shape)} (rank {arr.ndim} vs {len(spec.shape)}; batch first)"
            )
        for i, (got, dim) in enumerate(zip(arr.shape, spec.shape, strict=False)):
            if i > 0 and isinstance(dim, int) and dim > 0 and got != dim:
                raise ConvertError(
                    f"{data.name}: input {spec.name!r} has shape {list(arr.shape)}, the model wants "
                    f"{list(spec.shape)} (dimension {i}: {got} vs {dim})"
                )
        if n is not None and len(arr) != n:
            raise ConvertError(f"{data.name}: inputs have different sample counts")
        n = len(arr)
        fixed[spec.name] = np.ascontiguousarray(arr)
    if not n:
        raise ConvertError(f"{data.name}: no samples")
    if data.labels is not None and len(data.labels) != n:
        raise ConvertError(f"{data.name}: {len(data.labels)} labels for {n} samples")
    return Dataset(data.name, fixed, data.labels, data.classes)


def onnx_input_specs(model_path: str | Path) -> list[InputSpec]:
    """Input names, shapes and dtypes of an ONNX model (via onnxruntime, which also validates it)."""
    sess = ort_session(model_path)
    return [InputSpec(i.name, tuple(_dim(d) for d in i.shape), _ort_dtype(i.type)) for i in sess.get_inputs()]


def _dim(d):
    return d if isinstance(d, int) and d > 0 else None


def _ort_dtype(t: str) -> str:
    table = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
        "tensor(uint8)": "uint8",
        "tensor(int8)": "int8",
        "tensor(bool)": "bool",
    }
    return table.get(t, "float32")


def ort_session(model_path: str | Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(
            f"{Path(model_path).name}: not a model onnxruntime can load ({first[:300]})"
        ) from None
