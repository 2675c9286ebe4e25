"""The study around the clips: participants, visits and consent, their rules, and (later) the
clinical data import, withdrawal and the research export."""
