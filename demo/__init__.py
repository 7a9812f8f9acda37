"""LSTP-Chat's demo package: ``python -m demo.demo`` launches ``llavidal demo`` (see ``demo/demo.py``)."""
