"""Replays of reference fixtures through jaxdiff's own code (`python -m jaxdiff.parity`)."""
