"""
Benchmarks of remoteio-factory against a local ``remoteio-server --backend mock``.

Run ``python -m bench [--quick] [--json PATH]`` from the repository root; see
:mod:`bench.__main__` for what is measured and how.
"""
