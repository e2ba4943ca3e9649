"""The flight recorder (issue 16): the capture format, its reader, and the off-loop writer the
upstream lines feed when `capture.dir` is set (README "Capture")."""
