"""Fixtures shared by every test package: a provisioned site and a real Mosquitto broker."""

pytest_plugins = ["tests.support.mosquitto"]
