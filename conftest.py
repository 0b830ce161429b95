"""pytest executes the lessons in their reduced configuration.

A lesson whose full run takes minutes (notebooks/09, training) reads ``REFIMPL_LESSON_SIZE``:
unset when ``jupyter nbconvert --execute`` stores the full run, ``small`` here, where the same
code runs on fewer samples, epochs and seeds. Each such lesson says what it reduces.
"""

import os

os.environ.setdefault("REFIMPL_LESSON_SIZE", "small")
