"""`pvhboot compare`: boot one kernel through every entry path and show where early boot diverged.

cells.py    entry paths x vCPUs x memory -> Cell specs (JSON, for a child process or a Dask task)
cell.py     ``python3 -m pvhboot.compare.cell``: boot one cell, print its result (the child process)
faults.py   seeded faults (builder mutate hooks) that break one path, for proving the tool works
probe.py    the built-in probe's fingerprint; linux.py + collector.sh: a real Linux's
sanitize.py the e820 map as the kernel keeps it
rules.py    must-equal vs allowed-to-differ, each allowed difference with its reason
diff.py     the diff engine; report.py the rich table
runner.py   the local process pool (--jobs); cluster.py the Dask backend (--cluster)
engine.py   options -> cells -> records
"""
