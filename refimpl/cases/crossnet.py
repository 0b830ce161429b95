"""Checks for the cross networks and InteractionDCNArch (filled in with those layers)."""


def checks():
    return []
