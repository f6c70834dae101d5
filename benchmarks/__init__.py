"""The benchmarks of pyro-nf. Each script runs as a module from the repository root:

    python -m benchmarks.accuracy --quick
    python -m benchmarks.posteriordb.validate --only arK-arK --out /tmp/ark.md

(``python benchmarks/accuracy.py`` is not supported: the scripts import one another through the
package). What they share is in :mod:`benchmarks.common` (the guide tables, the machine header,
the command line, the accuracy pass criterion, the report writer) and
:mod:`benchmarks._timing` (the SVI timing loops); the tables they write are in
``benchmarks/results/``.
"""
