"""Data for training: batches of dense features, categorical ids and labels.

:class:`refimpl.data.batch.Batch` is what every source yields (synthetic data with a planted
answer, MovieLens-100k, Criteo-format files) and what the training loop reads; every source
offers the interface described in :mod:`refimpl.data.source` (``splits``, ``keys``,
``num_embeddings``, ``dense_in_features``, ``num_samples(split)``, ``batches(split,
batch_size, shuffle_seed, start)``).
"""

from refimpl.data.batch import Batch
from refimpl.data.criteo import CriteoTSV
from refimpl.data.movielens import MovieLens100k
from refimpl.data.source import DataSource, num_batches
from refimpl.data.synthetic import SyntheticCriteo

__all__ = ["Batch", "CriteoTSV", "DataSource", "MovieLens100k", "SyntheticCriteo", "num_batches"]
