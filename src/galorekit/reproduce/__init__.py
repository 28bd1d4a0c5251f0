"""``galore reproduce``: the paper's claims at laptop scale.

Modules, one job each: ``plan`` (the runs: quick and full plans), ``configs`` (a run as training
configs), ``worker`` (one run in a process), ``runner`` (parallel execution, result cache,
output directory), ``tuning`` (LR grids), ``table`` / ``ablations`` / ``claims`` (what the results
say), ``theory`` (the instrumented low-rank-gradient run and its metrics), ``report`` and ``plots``
(markdown, JSON, PNG), ``cli`` (the command).
"""
