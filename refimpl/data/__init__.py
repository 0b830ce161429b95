"""Data for training: batches of dense features, categorical ids and labels.

:class:`refimpl.data.batch.Batch` is what every source yields (synthetic data with a planted
answer, MovieLens-100k, Criteo-format files) and what the training loop reads.
"""
