"""The seven stages, one module each: a strict config, run(cfg, run_dir) -> Result, nothing else.

A stage reads earlier stages' result.json by path, calls the domain packages (quant, runtimes, evaluate,
bandwidth) and writes its own result. Nothing below `pipeline` imports a stage.
"""
