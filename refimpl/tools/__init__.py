"""The tools that prove and time the layers: gradient checking (:mod:`.gradcheck`), naive loop
versions (:mod:`.loops`), TorchRec parity (:mod:`.parity`), FLOP counts (:mod:`.flops`),
``python -m refimpl check`` (:mod:`.check`) and ``python -m refimpl bench`` (:mod:`.bench`)."""
