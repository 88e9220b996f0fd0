"""matrix.html: a verdict per entry, drop vs gate, size against FP32, short names, relative links, the plot."""

from __future__ import annotations

import re

from yolo_compile.ci.matrix_page import render


def test_matrix_page_reads_like_the_report(finished_run):
    root = finished_run.parent
    result = {"name": "nightly", "matrix_file": "/somewhere/deep/matrix.yaml", "seconds": 256.5,
              "cluster": {"CPU": 2.0, "memory": 123456789.0, "object_store_memory": 1.0},
              "runs": [{"label": "a / cpu / mixed", "status": "passed", "run": finished_run.name,
                        "entry": {"model": "/very/long/path/models/aoi_yolov8n.pt", "target": "cpu", "recipe": "mixed"}},
                       {"label": "b / cpu / int8", "status": "error", "error": "RayTaskError: worker died",
                        "entry": {"model": "/x/b.pt", "target": "cpu", "recipe": "int8"}}]}
    page = render(result, root)
    assert "aoi_yolov8n / cpu / mixed" in page and "/very/long/path" not in page and "/somewhere" not in page
    assert "1 of 2 entries passed; 1 did not" in page and "RayTaskError: worker died" in page
    assert "every stage passed" in page  # the report's own verdict for the entry
    assert re.search(r"\d+\.\d MB \(0\.\d\dx FP32\)", page)  # the quantized size against FP32
    assert page.count("report.html") == 1 and "href='../../runs/" in page
    assert "256.500" not in page and "object_store_memory" not in page and "2 CPU" in page
    assert "http" not in page
