PY ?= python3

.PHONY: setup test test-fast test-rig probe bench clean

setup:
	./scripts/setup-tests.sh

# unit + property + differential + kvm tiers (seconds)
test-fast:
	$(PY) -m pytest -m "not rig" -q

test-rig:
	$(PY) -m pytest -m rig -q

# The full suite, exactly what .ci/run runs.
test:
	./scripts/setup-tests.sh && $(PY) -m pytest -q

probe:
	$(MAKE) -C src/pvhboot/probe/src

bench:
	$(PY) -m bench.run

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .hypothesis
