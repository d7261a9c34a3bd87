"""pvhboot benchmarks (issue 6): each measurement is a module here, ``python3 -m bench.run`` runs them
all side by side and writes bench/results.json.  Nothing here is imported by pvhboot itself."""
