"""
Benchmarks of remoteio-factory against a local ``remoteio-server --backend mock``,
beside a one-process reference server speaking the same protocol
(:mod:`bench.reference`) and a TCP echo (:mod:`bench.echo`).

Run ``python -m bench [--quick] [--only PHASE,...] [--json PATH]`` from the
repository root; see :mod:`bench.__main__` for what is measured and how, and
``python -m bench.readme`` to write the README's table from the results.
"""
