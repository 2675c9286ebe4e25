"""The unit's hardware behind small interfaces: a real backend and a simulated one for each.

Like gpiozero's pin factories, the backend is chosen by the unit's config file; the simulated
backends are first-class (the demo and most tests run on them) and the real ones stay thin.
"""
