"""Stage 1: Ultralytics .pt (or model .yaml) -> ONNX with a static image size, opset >= 17, simplified."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from yolo_compile import fileio, runs
from yolo_compile.config import check_positive, path_field
from yolo_compile.errors import ExportError
from yolo_compile.runtimes.pytorch import check_model_path, load_model

log = logging.getLogger(__name__)
STAGE = "export"
UINT8_LAYOUTS = ("none", "nhwc_bgr", "nchw_rgb")


@dataclass(frozen=True)
class ExportConfig:
    model: str = path_field()  # .pt checkpoint or Ultralytics model .yaml (random weights: plumbing only)
    imgsz: int = 640  # square input size, a multiple of 32
    opset: int = 19  # ONNX opset, 17 or newer
    dynamic_batch: bool = True  # batch axis symbolic (image size stays static) so build/throughput can sweep batch
    uint8_input: str = "none"  # none | nhwc_bgr (cv2 frames) | nchw_rgb (nvJPEG frames): also write export/model.uint8.onnx taking letterboxed uint8 frames, /255 and layout fused in the graph
    trusted_models: tuple[str, ...] = ()  # sha256 allow-list of .pt files; when set, any other checkpoint is refused

    def __post_init__(self) -> None:
        check_positive("imgsz", self.imgsz)
        if self.imgsz % 32:
            raise ExportError(f"parameter 'imgsz' = {self.imgsz}: must be a multiple of 32 (YOLO's largest stride)")
        if self.opset < 17:
            raise ExportError(f"parameter 'opset' = {self.opset}: must be >= 17")
        if self.uint8_input not in UINT8_LAYOUTS:
            raise ExportError(f"parameter 'uint8_input' = {self.uint8_input!r}: expected one of {', '.join(UINT8_LAYOUTS)}")


@dataclass
class ExportResult:
    status: str
    onnx: str  # relative to the run folder
    checkpoint: str
    checkpoint_sha256: str
    onnx_sha256: str
    onnx_bytes: int
    input_name: str
    input_shape: list
    output_name: str
    output_shape: list
    imgsz: int
    opset: int
    class_names: dict
    num_classes: int
    head_index: int
    head_type: str
    model_yaml: str
    seconds: float = 0.0
    source: dict = field(default_factory=dict)
    uint8_onnx: str = ""  # relative to the run folder; set when uint8_input is not none
    uint8_layout: str = "none"




def fix_image_size(onnx_path: Path, imgsz: int) -> None:
    """Make H and W static in a dynamic-axes export and fold the shape arithmetic away (batch stays symbolic)."""
    import onnx
    import onnxslim

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    dims[2].dim_value = imgsz
    dims[3].dim_value = imgsz
    for out in model.graph.output:
        out_dims = out.type.tensor_type.shape.dim
        out_dims[0].dim_param = "batch"
        for d in out_dims[1:]:
            d.Clear()
    del model.graph.value_info[:]
    slim = onnxslim.slim(model)
    with fileio.atomic_path(onnx_path) as tmp:
        onnx.save(slim, str(tmp))


VOLATILE_METADATA = ("date",)  # Ultralytics stamps the export time: the same model would hash differently each run


def drop_volatile_metadata(onnx_path: Path) -> None:
    """Remove the export timestamp from the ONNX metadata, so the same checkpoint always exports the same bytes."""
    import onnx

    model = onnx.load(str(onnx_path))
    props = [(p.key, p.value) for p in model.metadata_props if p.key not in VOLATILE_METADATA]
    if len(props) == len(model.metadata_props):
        return
    del model.metadata_props[:]
    for k, v in props:
        model.metadata_props.add(key=k, value=v)
    with fileio.atomic_path(onnx_path) as tmp:
        onnx.save(model, str(tmp))


def fuse_uint8_input(src: str | Path, dst: str | Path, layout: str) -> Path:
    """Write dst: src with a uint8 frame input (nhwc_bgr or nchw_rgb) cast, reordered and divided by 255 in-graph.

    The float input of src (N x 3 x H x W, RGB, 0..1) becomes an internal tensor, so an engine built from dst
    takes the letterboxed frame as it leaves the decoder: a quarter of the bytes over PCIe.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if layout not in UINT8_LAYOUTS[1:]:
        raise ExportError(f"uint8 layout {layout!r}: expected one of {', '.join(UINT8_LAYOUTS[1:])}")
    model = onnx.load(str(src))
    graph = model.graph
    old = graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in old.type.tensor_type.shape.dim]
    n, c, h, w = dims
    new_name = f"{old.name}_uint8"
    shape = [n, h, w, c] if layout == "nhwc_bgr" else [n, c, h, w]
    new_input = helper.make_tensor_value_info(new_name, TensorProto.UINT8, shape)
    nodes, x = [], new_name
    if layout == "nhwc_bgr":
        nodes.append(helper.make_node("Transpose", [x], ["u8_nchw"], perm=[0, 3, 1, 2], name="/preprocess/Transpose"))
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "bgr_to_rgb"))
        nodes.append(helper.make_node("Gather", ["u8_nchw", "bgr_to_rgb"], ["u8_rgb"], axis=1, name="/preprocess/Gather"))
        x = "u8_rgb"
    graph.initializer.append(numpy_helper.from_array(np.array(255.0, np.float32), "u8_scale"))
    nodes.append(helper.make_node("Cast", [x], ["u8_float"], to=TensorProto.FLOAT, name="/preprocess/Cast"))
    # Div, not Mul by 1/255: bit-identical to the float pipeline's `/ 255` (images.to_tensor)
    nodes.append(helper.make_node("Div", ["u8_float", "u8_scale"], [old.name], name="/preprocess/Div"))
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    onnx.checker.check_model(model)
    with fileio.atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return Path(dst)


def run(cfg: ExportConfig, run_dir: str | Path) -> ExportResult:
    """Export the model into run_dir/export/ and return what the next stages need to know about it."""
    import onnx

    out = runs.stage_dir(run_dir, STAGE)
    src = Path(cfg.model)
    if src.suffix in (".yaml", ".yml") and not src.is_file() and not src.name.startswith("yolo"):
        raise ExportError(f"{src}: no such model file; pass --model PATH to a .pt or an Ultralytics .yaml")
    with runs.Timer() as t:
        source = {"path": str(src)}
        ckpt = out / "model.pt"
        check_model_path(src)
        if src.suffix == ".pt":
            # Unpickle once, and only the copy: export writes beside the checkpoint, inside the run folder.
            source["sha256"] = fileio.sha256(src)
            if cfg.trusted_models and source["sha256"] not in cfg.trusted_models:
                raise ExportError(f"{src}: sha256 {source['sha256']} is not in trusted_models; add it if you trust this file")
            shutil.copy2(src, ckpt)
            model = load_model(ckpt, shown=src)
        else:
            model = load_model(src)
            model.save(str(ckpt))
        head = model.model.model[-1]
        log.info("exporting %s at %d px, opset %d", src, cfg.imgsz, cfg.opset)
        exported = Path(model.export(format="onnx", imgsz=cfg.imgsz, opset=cfg.opset, simplify=True,
                                     dynamic=cfg.dynamic_batch, batch=1, device="cpu", verbose=False))
        onnx_path = out / "model.onnx"
        if exported.resolve() != onnx_path.resolve():
            os.replace(exported, onnx_path)
        if cfg.dynamic_batch:
            fix_image_size(onnx_path, cfg.imgsz)
        drop_volatile_metadata(onnx_path)
        proto = onnx.load(str(onnx_path))
        onnx.checker.check_model(proto)
        inp, outp = proto.graph.input[0], proto.graph.output[0]
        shape = lambda v: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
        names = {int(k): str(v) for k, v in model.names.items()}
        if shape(outp)[1] != 4 + len(names):
            raise ExportError(f"{onnx_path}: output {outp.name} has {shape(outp)[1]} channels, expected 4 + {len(names)} classes")
        uint8_path = ""
        if cfg.uint8_input != "none":
            uint8_path = f"{STAGE}/{fuse_uint8_input(onnx_path, out / 'model.uint8.onnx', cfg.uint8_input).name}"
    result = ExportResult(
        status="passed", onnx="export/model.onnx", checkpoint="export/model.pt",
        checkpoint_sha256=fileio.sha256(ckpt), onnx_sha256=fileio.sha256(onnx_path), onnx_bytes=onnx_path.stat().st_size,
        input_name=inp.name, input_shape=shape(inp), output_name=outp.name, output_shape=shape(outp),
        imgsz=cfg.imgsz, opset=cfg.opset, class_names=names, num_classes=len(names),
        head_index=int(head.i), head_type=type(head).__name__, model_yaml=str(model.model.yaml.get("yaml_file", "")),
        seconds=round(t.seconds, 2), source=source, uint8_onnx=uint8_path, uint8_layout=cfg.uint8_input,
    )
    runs.write_result(run_dir, STAGE, result)
    return result
