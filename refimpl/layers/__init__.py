"""The layers: what a learner reads.

One module per layer family, each with its textbook forward and backward (written once, running
on float and on exact arrays) and the layer class that validates inputs, owns parameters named
like TorchRec's ``state_dict()`` and keeps the contract of :class:`refimpl.layers.base.Layer`.
Nothing here imports the tools that prove and time the layers, nor ``derivations``.
"""
