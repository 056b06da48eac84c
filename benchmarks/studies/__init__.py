"""One-off studies behind a design choice or a documented figure (docs/design/README.md): each
reproduces its table with `python -m benchmarks.studies.NAME` (see its docstring). The harness
users run to compare and size their own runs is one level up, in benchmarks/.
"""
