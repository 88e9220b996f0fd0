"""One error family; messages name the file, the value and the fix."""


class CompileError(Exception):
    """Base of every error yolo-compile raises on purpose."""


class ConfigError(CompileError):
    """A parameter is unknown, mistyped or out of range."""


class RunFolderError(CompileError):
    """A run folder lacks what a stage needs (usually: an earlier stage did not run)."""


class ExportError(CompileError):
    pass


class CalibrationError(CompileError):
    pass


class QuantizeError(CompileError):
    pass


class CompareError(CompileError):
    pass


class BuildError(CompileError):
    pass


class ThroughputError(CompileError):
    pass


class WorkflowError(CompileError):
    pass


class InputError(ConfigError):
    """An input (parameter, path, image folder, model file, data.yaml) is unusable: refused before anything runs."""


class BandwidthError(CompileError):
    pass


class MatrixError(CompileError):
    """A matrix file is malformed, or a cluster cannot run what it asks for."""


class QatError(CompileError):
    """Quantization-aware fine-tuning cannot start or finish (no CUDA, a bad checkpoint, a run folder without a placement)."""


class ReferenceAssetError(CompileError):
    """A committed reference asset is missing or does not match its recorded checksum."""
