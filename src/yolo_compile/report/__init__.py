"""What a person reads: report.html of a run (html) and the run-folder tools (archive: ls, diff, verify, gc, review).
"""
