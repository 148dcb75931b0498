"""Learning from a deployment's outcomes: the in-domain head, its blend with the shipped router, the
gate that decides whether a candidate bundle replaces the champion."""
