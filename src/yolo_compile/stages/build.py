"""Stage 5: the engine. TensorRT through Polygraphy's loaders (strongly typed), or on a CPU target the faster of
an OpenVINO IR and an ONNX Runtime model among the runtimes the compare stage verified (see cpu_engine.py)."""

from __future__ import annotations

import json
import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from yolo_compile import fileio, runs
from yolo_compile.runtimes.registry import CPU_BACKENDS
from yolo_compile.config import check_choice, check_positive, path_field
from yolo_compile.runtimes.registry import resolve_target
from yolo_compile.runtimes.tensorrt import load_engine, tensorrt_available, tensorrt_identity, timing_cache_path
from yolo_compile.errors import BuildError

log = logging.getLogger(__name__)
STAGE = "build"
HW_COMPAT = ("none", "ampere_plus", "same_compute_capability")


@dataclass(frozen=True)
class BuildConfig:
    target: str = "auto"  # tensorrt | cpu | auto
    batch_sizes: tuple[int, ...] = (1, 8, 32)  # TensorRT optimization profile: min, opt (middle), max
    timing_cache: str = path_field("")  # TensorRT timing cache to load and extend; empty: timing.cache beside the run folders
    hardware_compatibility: str = "none"  # none | ampere_plus | same_compute_capability
    version_compatible: bool = False  # TensorRT version-compatible plan (lean runtime)
    cpu_engines: tuple[str, ...] = ("openvino", "onnxruntime")  # CPU target: engines to build and time; the faster verified one ships
    choice_seconds: float = 1.5  # CPU target: timing budget per candidate engine (batch 1, stops when the p50 is stable)

    def __post_init__(self) -> None:
        resolve_target(self.target)
        check_choice("hardware_compatibility", self.hardware_compatibility, HW_COMPAT)
        for name in self.cpu_engines:
            check_choice("cpu_engines", name, CPU_BACKENDS)
        if not self.cpu_engines:
            raise BuildError("parameter 'cpu_engines' is empty: give openvino, onnxruntime or both")
        check_positive("choice_seconds", self.choice_seconds)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise BuildError(f"parameter 'batch_sizes' = {self.batch_sizes!r}: give positive batch sizes, e.g. 1,8,32")


@dataclass
class BuildResult:
    status: str
    backend: str  # tensorrt | openvino | onnxruntime | none
    target: str
    reason: str = ""
    engine: str = ""  # relative to the run folder
    engine_sha256: str = ""
    engine_bytes: int = 0
    source_onnx: str = ""
    details: dict = field(default_factory=dict)
    layer_precisions: dict = field(default_factory=dict)
    commands: list = field(default_factory=list)  # equivalent or finishing command lines
    choice: dict = field(default_factory=dict)  # CPU target: candidates, images/s, picked, reason
    checks: dict = field(default_factory=dict)  # the shipped engine vs the model the gate evaluated, on real images
    seconds: float = 0.0


# hardware_compatibility value -> (trtexec spelling, polygraphy / trt.HardwareCompatibilityLevel spelling)
_HW_FLAGS = {"ampere_plus": ("ampere+", "ampere_plus"),
             "same_compute_capability": ("sameComputeCapability", "same_compute_capability")}


def tensorrt_commands(onnx_path: str, engine_path: str, input_name: str, imgsz: int, batch_sizes: tuple[int, ...],
                      cache: str, hardware_compatibility: str = "none", version_compatible: bool = False) -> list[str]:
    """Return the trtexec and polygraphy command lines equivalent to the TensorRT build."""
    lo, opt, hi = profile_batches(batch_sizes)
    shape = lambda b: f"{input_name}:{b}x3x{imgsz}x{imgsz}"  # noqa: E731
    q = shlex.quote
    trtexec_extra, poly_extra = "", ""
    if hardware_compatibility in _HW_FLAGS:
        trtexec_extra += f" --hardwareCompatibilityLevel={_HW_FLAGS[hardware_compatibility][0]}"
        poly_extra += f" --hardware-compatibility-level {_HW_FLAGS[hardware_compatibility][1]}"
    if version_compatible:
        trtexec_extra += " --versionCompatible"
        poly_extra += " --version-compatible"
    return [
        f"trtexec --onnx={q(onnx_path)} --stronglyTyped --saveEngine={q(engine_path)} --timingCacheFile={q(cache)} "
        f"--minShapes={shape(lo)} --optShapes={shape(opt)} --maxShapes={shape(hi)} --profilingVerbosity=detailed"
        f"{trtexec_extra}",
        f"polygraphy convert {q(onnx_path)} --strongly-typed -o {q(engine_path)} --load-timing-cache {q(cache)} "
        f"--save-timing-cache {q(cache)} --trt-min-shapes {shape(lo)} --trt-opt-shapes {shape(opt)} "
        f"--trt-max-shapes {shape(hi)} --profiling-verbosity detailed{poly_extra}",
    ]


def profile_batches(batch_sizes: tuple[int, ...]) -> tuple[int, int, int]:
    """Return (min, opt, max) batch for the optimization profile: opt is the middle requested size."""
    ordered = sorted(set(batch_sizes))
    return ordered[0], ordered[len(ordered) // 2], ordered[-1]


_DTYPE = [("INT8", re.compile(r"\bint8\b", re.I)), ("FP8", re.compile(r"\bfp8\b", re.I)),
          ("FP16", re.compile(r"\b(fp16|half)\b", re.I)), ("BF16", re.compile(r"\bbf16\b", re.I)),
          ("FP32", re.compile(r"\b(fp32|float)\b", re.I)), ("INT32", re.compile(r"\bint32\b", re.I))]


def _tensor_dtype(desc: str) -> str:
    for name, pat in _DTYPE:
        if pat.search(desc):
            return name
    return "other"


def layer_precisions(inspector_json: str | dict, head_prefix: str) -> dict:
    """Parse TensorRT's engine-inspector JSON (detailed verbosity) into a layer-precision table.

    A layer's precision is the data type of its first input (a convolution fed INT8 runs INT8 even when
    its output is FP16). Returns counts per precision, the reformat-layer count and the per-layer rows.
    """
    info = json.loads(inspector_json) if isinstance(inspector_json, str) else inspector_json
    rows, counts, reformats, head_int8 = [], {}, 0, []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # LAYER_NAMES_ONLY verbosity: no type information
            raise BuildError("engine inspector returned names only: build with profiling_verbosity=DETAILED")
        name = layer.get("Name", "")
        kind = layer.get("LayerType", "")
        inputs = layer.get("Inputs", [])
        outputs = layer.get("Outputs", [])
        desc = (inputs or outputs or [{}])[0].get("Format/Datatype", "")
        prec = _tensor_dtype(desc)
        if kind == "Reformat" or "Reformatting CopyNode" in name:
            reformats += 1
        counts[prec] = counts.get(prec, 0) + 1
        is_head = head_prefix in name
        if is_head and prec == "INT8" and re.search(r"cv[23]\.\d+\.2/|/dfl/", name):
            head_int8.append(name)
        rows.append({"name": name, "type": kind, "precision": prec, "head": is_head})
    return {"counts": counts, "reformat_layers": reformats, "head_int8_layers": head_int8, "layers": rows}


def check_precisions(table: dict, recipe: str) -> None:
    """Raise BuildError when a float-head recipe left a head layer in INT8, or an INT8 recipe has no INT8 layer."""
    if recipe == "mixed" and table["head_int8_layers"]:
        raise BuildError(f"head layers run INT8 in a mixed recipe: {', '.join(table['head_int8_layers'][:3])}")
    if recipe in ("mixed", "int8") and not table["counts"].get("INT8"):
        raise BuildError("no layer runs INT8 although the recipe quantizes: check the Q/DQ placement in the ONNX")


def run(cfg: BuildConfig, run_dir: str | Path) -> BuildResult:
    """Build the engine for the target, or record 'skipped' with the commands that finish it on the target."""
    run_dir = Path(run_dir)
    exp = runs.require_passed(run_dir, "export")
    quant = runs.require_passed(run_dir, "quantize")
    target = resolve_target(cfg.target)
    src = run_dir / quant["onnx"]
    with runs.Timer() as t:
        if target == "cpu":
            from yolo_compile.stages.build_cpu import build_cpu

            engine, choice, checks = build_cpu(cfg, src, run_dir)
            result = BuildResult(status="passed", target="cpu", **engine.fields(), choice=choice, checks=checks)
        else:
            ok, why = tensorrt_available()
            # shared by runs, but only by those with the same TensorRT version and GPU (runtimes.tensorrt.tensorrt_identity)
            cache = cfg.timing_cache or str(timing_cache_path(runs.cache_root(run_dir), tensorrt_identity()))
            engine = run_dir / STAGE / "model.plan"
            cmds = tensorrt_commands(str(src), str(engine), exp["input_name"], int(exp["imgsz"]), cfg.batch_sizes, cache,
                                     cfg.hardware_compatibility, cfg.version_compatible)
            if not ok:
                cmds.append(f"papermill notebooks/05_build.ipynb {run_dir}/05_build.ipynb -p run_dir {run_dir} -p target tensorrt")
                result = BuildResult(status="skipped", backend="none", target=target, reason=why, source_onnx=quant["onnx"],
                                     commands=cmds)
            else:
                with fileio.file_lock(f"{cache}.lock"):  # concurrent builds extend the shared timing cache in turn
                    result = _build_tensorrt(cfg, src, engine, exp, quant, cache)
                result.commands = cmds
    result.seconds = round(t.seconds, 2)
    runs.write_result(run_dir, STAGE, result)
    return result


def _build_tensorrt(cfg: BuildConfig, src: Path, engine: Path, exp: dict, quant: dict, cache: str) -> BuildResult:
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    lo, opt, hi = profile_batches(cfg.batch_sizes)
    size = int(exp["imgsz"])
    profile = Profile().add(exp["input_name"], min=(lo, 3, size, size), opt=(opt, 3, size, size), max=(hi, 3, size, size))
    hw_level = None
    if cfg.hardware_compatibility != "none":
        # Never fall back to a non-portable engine silently: an older TensorRT lacks SAME_COMPUTE_CAPABILITY.
        hw_level = getattr(trt.HardwareCompatibilityLevel, cfg.hardware_compatibility.upper(), None)
        if hw_level is None:
            raise BuildError(f"parameter 'hardware_compatibility' = {cfg.hardware_compatibility!r}: TensorRT "
                             f"{trt.__version__} lacks it; upgrade TensorRT or pass hardware_compatibility none")
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    config = CreateConfig(
        profiles=[profile], load_timing_cache=cache if Path(cache).is_file() else None,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED, hardware_compatibility_level=hw_level,
        version_compatible=cfg.version_compatible or None,
    )
    network = NetworkFromOnnxPath(str(src), strongly_typed=True)  # precision comes from the ONNX (Q/DQ + FP16)
    plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=cache)()
    if not plan:
        raise BuildError(f"{src}: TensorRT returned no engine; see the TensorRT log above")
    with fileio.atomic_path(engine) as tmp:
        tmp.write_bytes(bytes(plan))
    trt_engine = load_engine(bytes(plan), cfg.version_compatible)
    if trt_engine is None:
        raise BuildError(f"{engine}: TensorRT {trt.__version__} could not deserialize the plan it just built; "
                         "see the TensorRT log above")
    inspector_json = trt_engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    fileio.write_text(engine.with_suffix(".inspector.json"), inspector_json)
    table = layer_precisions(inspector_json, f"/model.{exp['head_index']}/")
    fileio.write_json(engine.with_suffix(".layers.json"), table)
    check_precisions(table, quant["recipe"])
    return BuildResult(
        status="passed", backend="tensorrt", target="tensorrt", engine=f"{STAGE}/{engine.name}",
        engine_sha256=fileio.sha256(engine), engine_bytes=engine.stat().st_size, source_onnx=quant["onnx"],
        details={"tensorrt": trt.__version__, "profile": {"min": lo, "opt": opt, "max": hi}, "timing_cache": cache,
                 "strongly_typed": True, "hardware_compatibility": cfg.hardware_compatibility,
                 "version_compatible": cfg.version_compatible},
        layer_precisions={k: v for k, v in table.items() if k != "layers"},
    )
