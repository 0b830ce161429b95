"""Checks for MLP, DenseArch, OverArch and InteractionProjectionArch."""


def checks():
    return []
