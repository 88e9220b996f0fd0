import pytest

from yolo_compile import config
from yolo_compile.runtimes import registry, tensorrt
from yolo_compile.stages.build import BuildConfig
from yolo_compile.stages.calibrate import CalibrateConfig
from yolo_compile.stages.compare import CompareConfig
from yolo_compile.errors import ConfigError, ExportError
from yolo_compile.stages.export import ExportConfig
from yolo_compile.stages.quantize import QuantizeConfig


def test_unknown_parameter_is_an_error_naming_expected_ones():
    with pytest.raises(ConfigError, match="unknown parameter.*imgsize.*expected.*imgsz"):
        config.build(ExportConfig, {"model": "m.pt", "imgsize": 640})


def test_values_are_coerced_to_field_types():
    cfg = config.build(BuildConfig, {"batch_sizes": "1,4, 16", "version_compatible": "true"})
    assert cfg.batch_sizes == (1, 4, 16) and cfg.version_compatible is True
    assert config.build(CompareConfig, {"eval_dir": "x", "box_atol": "1.10"}).box_atol == pytest.approx(1.10)


@pytest.mark.parametrize("field,value", [("calib_images", "many"), ("calib_images", 2.5), ("calib_seed", True)])
def test_mistyped_values_are_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        config.build(CalibrateConfig, {"calib_dir": "d", field: value})


def test_nan_threshold_is_refused():
    with pytest.raises(ConfigError, match="NaN"):
        config.build(CompareConfig, {"eval_dir": "x", "score_atol": "nan"})


def test_missing_required_parameter():
    with pytest.raises(ConfigError, match="missing required.*calib_dir"):
        config.build(CalibrateConfig, {})


def test_choices_and_ranges_are_checked():
    with pytest.raises(ConfigError, match="recipe.*mixed, int8, float"):
        QuantizeConfig(recipe="int4")
    with pytest.raises(ConfigError, match="target"):
        QuantizeConfig(target="gpu")
    with pytest.raises(ExportError, match="multiple of 32"):
        ExportConfig(model="m.pt", imgsz=100)


def test_auto_target_is_cpu_without_tensorrt():
    ok, reason = tensorrt.tensorrt_available()
    assert registry.resolve_target("auto") == ("tensorrt" if ok else "cpu")
    assert registry.resolve_target("cpu") == "cpu"
    if not ok:
        assert "tensorrt" in reason.lower() or "gpu" in reason.lower()


def test_importing_the_package_loads_no_heavy_backend():
    import subprocess
    import sys

    code = ("import sys, yolo_compile.cli, yolo_compile.pipeline.workflow, yolo_compile.pipeline.registry\n"
            "from yolo_compile.stages import export, calibrate, quantize, compare, build, throughput, bandwidth\n"
            "from yolo_compile.report import html, archive\n"
            "from yolo_compile.runtimes import registry\n"
            "from yolo_compile.quant import candidates, graph, modelopt, nncf, scales, study\n"
            "print(','.join(m for m in ('torch', 'tensorrt', 'onnxruntime', 'modelopt', 'ultralytics', 'polygraphy', 'cv2')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_path_parameters_are_declared_once_on_the_config_fields():
    """The workflow, validation and the stage key read one declaration (config.path_field), not lists of names."""
    from yolo_compile.pipeline import registry as stage_registry
    from yolo_compile.pipeline.workflow import file_params

    assert stage_registry.path_params() == {"model": "file", "calib_dir": "file", "keep_float": "json", "data": "file",
                                            "eval_dir": "file", "timing_cache": "file"}
    assert file_params() == ["model", "calib_dir", "data", "eval_dir", "timing_cache"]
    assert stage_registry.is_path("keep_float", "a/nodes.json") and not stage_registry.is_path("keep_float", "/model.0/")
