"""The repository's own tools: finding and starting the phases (phases.py), the chapter diffs
(gen_diffs.py).
"""
