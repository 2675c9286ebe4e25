"""Tests of the hospital side (``server/``)."""
