"""Everything checked before the first kernel starts: parameters, paths, image folders, the model file, data.yaml.

Each check raises InputError with one line naming the parameter or file and the fix; the CLI exits 2 and no
run folder exists yet. Cheap by design (< 10 s): files are sniffed and a few images decoded, nothing is loaded.
"""

from __future__ import annotations

import ast
import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from yolo_compile import fileio, images
from yolo_compile.errors import InputError

LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
DETECT_MODELS = {"DetectionModel", "WorldModel", "YOLOEModel", "RTDETRDetectionModel"}
OTHER_TASKS = {"SegmentationModel": "segment", "PoseModel": "pose", "ClassificationModel": "classify",
               "OBBModel": "obb", "YOLOESegModel": "segment"}
# What an Ultralytics checkpoint's pickle may name: tensors, modules and plain containers. Anything else
# (os.system, builtins.eval, subprocess...) is refused before a single byte is unpickled.
SAFE_MODULES = ("torch", "ultralytics", "collections", "numpy", "copyreg", "_codecs", "datetime", "pathlib",
                "types", "argparse", "typing", "enum")
UNSAFE_MODULES = ("torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension", "torch._dynamo",
                  "torch.ops", "torch._ops", "torch.cuda", "torch.distributed", "torch.multiprocessing", "torch.backends",
                  "ultralytics.hub", "ultralytics.utils.checks", "ultralytics.utils.downloads", "ultralytics.utils.callbacks",
                  "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.ctypeslib", "numpy.lib.utils")
SAFE_BUILTINS = {"set", "frozenset", "slice", "dict", "list", "tuple", "int", "float", "bool", "complex", "bytearray",
                 "bytes", "str", "range", "object"}


def check(wf: dict, params: dict[str, Any]) -> None:
    """Raise InputError unless every parameter, path and input file of this workflow run is usable."""
    from yolo_compile.pipeline.registry import stage_params

    for name, value in params.items():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, str) and "\0" in v:
                raise InputError(f"parameter '{name}': contains a NUL byte; give a plain value")
    stages = wf["stages"]
    if "export" in stages:
        model_file(Path(params["model"]), params.get("trusted_models", ()))
    if "calibrate" in stages:
        image_folder("calib_dir", Path(params["calib_dir"]), int(params.get("min_images", 8)))
    if "compare" in stages:
        if params.get("eval_dir"):
            image_folder("eval_dir", Path(params["eval_dir"]), 1)
        if params.get("data"):
            data_yaml(Path(params["data"]))
    if params.get("keep_float") and str(params["keep_float"]).endswith(".json") and not Path(params["keep_float"]).is_file():
        raise InputError(f"parameter 'keep_float' = {params['keep_float']}: no such file; pass an existing recipe .json")
    for stage in wf["stages"]:
        plain_parameters(stage_params(stage, params))


PLAIN = (str, int, float, bool, type(None))


def plain_parameters(params: dict[str, Any]) -> None:
    """Raise InputError unless every name is an identifier and every value a plain literal (or a list of them).

    These are exactly the values papermill's Python translator writes as quoted literals (tests run the real
    translator on hostile strings through injected_cell_is_literal); checking types here keeps validation free
    of papermill's import, which costs seconds a warm re-run does not otherwise pay.
    """
    import keyword

    for name, value in params.items():
        if not name.isidentifier() or keyword.iskeyword(name):
            raise InputError(f"parameter name {name!r} is not a Python identifier; it would be pasted into the notebook as code")
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, PLAIN) for v in items):
            raise InputError(f"parameter '{name}': {type(value).__name__} values are not allowed; give text, numbers, true/false or a list")


def injected_cell_is_literal(params: dict[str, Any]) -> None:
    """Raise InputError unless papermill's injected parameters cell is only `name = literal` lines."""
    from papermill.translators import translate_parameters

    source = translate_parameters("python3", "python", {**params, "run_dir": "x"}, "Parameters")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise InputError(f"parameters would not form valid Python in the notebook ({e.msg}); check quotes and backslashes") from None
    for node in tree.body:
        ok = isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
            and node.targets[0].id in {**params, "run_dir": 1}
        if ok:
            try:
                ast.literal_eval(node.value)
            except ValueError:
                ok = False
        if not ok:
            raise InputError(f"a parameter would become code in the notebook ({ast.unparse(node)[:80]}); "
                             "give plain values (text, numbers, true/false, lists)")


def model_file(path: Path, trusted: tuple | list = ()) -> None:
    """Raise InputError unless path is a real Ultralytics detection checkpoint (or model .yaml) we may load."""
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file() and not path.name.startswith("yolo"):
            raise InputError(f"model {path}: no such file; pass --model PATH to a .pt or an Ultralytics .yaml")
        return
    if path.suffix == ".onnx":
        onnx_file(path)
        raise InputError(f"model {path}: the export stage takes the Ultralytics .pt it came from; pass --model MODEL.pt")
    if path.suffix != ".pt":
        raise InputError(f"model {path}: expected an Ultralytics .pt checkpoint or model .yaml, got '{path.suffix}'")
    if not path.is_file():
        raise InputError(f"model {path}: no such checkpoint; pass --model PATH to an existing .pt")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"model {path}: empty file (0 bytes); copy the checkpoint again")
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(LFS_MAGIC):
        raise InputError(f"model {path}: a Git LFS pointer, not the checkpoint; run `git lfs pull` in its repository")
    if trusted:
        digest = fileio.sha256(path)
        if digest not in set(trusted):
            raise InputError(f"model {path}: sha256 {digest} is not in trusted_models; add it there if you trust this file")
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pkl:
                raise InputError(f"model {path}: a zip without data.pkl, not a torch checkpoint; export it again with Ultralytics")
            bad = z.testzip()
            if bad:
                raise InputError(f"model {path}: member {bad} is corrupt (CRC mismatch); copy the checkpoint again")
            data = z.read(pkl[0])
    except zipfile.BadZipFile:
        raise InputError(f"model {path}: truncated or not a torch checkpoint (no zip directory at its end, {size} bytes); "
                         "copy the file again or re-save it with torch >= 1.6") from None
    names = pickle_globals(data, path)
    unsafe = sorted(n for n in names if not _safe_global(n))
    if unsafe:
        raise InputError(f"model {path}: its pickle calls {', '.join(unsafe[:3])}, which a checkpoint never needs; "
                         "refusing to load it (re-export the model from a trusted source)")
    classes = {n.rsplit(".", 1)[1] for n in names if n.startswith("ultralytics.nn.tasks.")}
    other = sorted(OTHER_TASKS[c] for c in classes if c in OTHER_TASKS)
    if other and not classes & DETECT_MODELS:
        raise InputError(f"model {path}: a {other[0]} model; yolo-compile compiles detection models (task=detect) only")
    if not classes & DETECT_MODELS:
        raise InputError(f"model {path}: holds no Ultralytics detection model (found {', '.join(sorted(classes)) or 'none'}); "
                         "pass a YOLO detection checkpoint")


def pickle_globals(data: bytes, path: Path) -> set[str]:
    """Return every 'module.name' a pickle imports, read without executing it."""
    found, strings, memo = set(), [], {}
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"):
                strings.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = strings[-1] if strings else None
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(arg))
            elif op.name in ("GLOBAL", "INST"):
                found.add(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.add(f"{strings[-2] if len(strings) > 1 else '?'}.{strings[-1] if strings else '?'}")
    except Exception as e:  # pickletools raises ValueError for truncated or garbled streams
        raise InputError(f"model {path}: its pickle is damaged ({e}); copy the checkpoint again") from None
    return found


def _safe_global(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return attr in SAFE_BUILTINS
    if any(module == m or module.startswith(m + ".") for m in UNSAFE_MODULES):
        return False
    return any(module == m or module.startswith(m + ".") for m in SAFE_MODULES)


def onnx_file(path: Path) -> None:
    """Raise InputError unless path is a readable ONNX model with its external data and a supported opset."""
    import onnx

    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(f"{path}: missing or empty ONNX file; export the model again")
    if path.read_bytes()[:len(LFS_MAGIC)] == LFS_MAGIC:
        raise InputError(f"{path}: a Git LFS pointer, not the model; run `git lfs pull`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}); it may be truncated: export it again") from None
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and not (path.parent / entry.value).is_file():
                raise InputError(f"{path}: its external data file {entry.value} is missing beside it; copy it too")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not 13 <= opset <= onnx.defs.onnx_opset_version():
        raise InputError(f"{path}: opset {opset} is unsupported (13..{onnx.defs.onnx_opset_version()}); re-export with opset=19")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise InputError(f"{path}: fails the ONNX checker ({str(e).splitlines()[0][:120]}); export it again") from None


def image_folder(name: str, folder: Path, need: int) -> None:
    """Raise InputError unless folder exists, stays put (no symlinks out) and decodes at least `need` images."""
    flag = {"calib_dir": "--calib", "eval_dir": "--eval"}.get(name, f"--set {name}=")
    if not folder.is_dir():
        raise InputError(f"parameter '{name}' = {folder}: no such folder; pass {flag} DIR with images from the target line")
    root = folder.resolve()
    found = images.list_images(folder)
    for p in found:
        if p.is_symlink() and not p.resolve().is_relative_to(root):
            raise InputError(f"parameter '{name}': {p} is a symlink to {p.resolve()}, outside {folder}; copy the image in instead")
    if len(found) < need:
        raise InputError(f"parameter '{name}' = {folder}: holds {len(found)} image file(s) "
                         f"({', '.join(images.IMAGE_SUFFIXES)}), fewer than {need}; add images")
    good, bad = 0, []
    for p in found:  # decode just enough of them: the stage decodes all, skipping and naming the bad ones
        img, why = images.decode_image(p.read_bytes())
        if img is None:
            bad.append(f"{p.name} ({why})")
        else:
            good += 1
        if good >= need or len(bad) > max(8, need):
            break
    if good < need:
        raise InputError(f"parameter '{name}' = {folder}: fewer than {need} decodable image(s) "
                         f"(e.g. {bad[0] if bad else '-'}); add real images")


def data_yaml(path: Path) -> None:
    """Raise InputError unless an Ultralytics data.yaml parses, names its classes and its val split exists with images."""
    import yaml

    if not path.is_file():
        raise InputError(f"parameter 'data' = {path}: no such file; pass --set data=PATH/data.yaml of a labeled split")
    try:
        spec = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"parameter 'data' = {path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(spec, dict) or "names" not in spec or not (spec.get("val") or spec.get("test")):
        raise InputError(f"parameter 'data' = {path}: needs 'names' and a 'val' split (Ultralytics data.yaml format)")
    root = Path(spec.get("path") or path.parent)
    root = root if root.is_absolute() else path.parent / root
    for split in [spec.get("val") or spec.get("test")]:
        for item in split if isinstance(split, list) else [split]:
            p = Path(str(item))
            p = p if p.is_absolute() else root / p
            if not p.exists():
                raise InputError(f"parameter 'data' = {path}: split {item} not found at {p}; fix 'path'/'val' in the file")
            if p.is_dir() and not images.list_images(p):
                raise InputError(f"parameter 'data' = {path}: split {p} holds no images")
