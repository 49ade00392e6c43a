"""Time series in bounded memory: a fixed-capacity numpy ring plus a self-coarsening history.

The graphs need two things from the samples: the last few minutes at full resolution (the
10 s / 1 min / 10 min windows), and the whole session at *some* resolution (the "all" window)
even after hours.  Both must cost a fixed amount of memory.

``SeriesRing`` is the recent part.  It stores every row twice, at ``i`` and ``i + capacity``, in
a ``(2 * capacity, ncols)`` array: the newest ``n`` rows are then always the contiguous slice
``buf[start:start + n]``, so ``view()`` hands the plot a numpy *view* with no copy and no
``concatenate`` per frame.  The price is two row writes per append, paid at the sample rate
(20 Hz), not the frame rate.

``CoarseHistory`` is the long part.  Rows are folded into buckets (the column-wise **max** of the
rows in a bucket, which is right for every column we keep: gauges show their peak and
cumulative counters are monotonic so max == last).  When the bucket array fills, adjacent
buckets are merged pairwise and the bucket width doubles: the memory stays at ``capacity`` rows
forever and the resolution degrades gracefully (4096 buckets of 0.5 s cover 34 min; after 10
doublings, 23 days).

The trap: ``view()`` returns views into live storage.  A caller that keeps one across an
``append`` sees rows change under it; the widgets copy what they hand to pyqtgraph (``setData``
copies anyway).
"""
from __future__ import annotations

import numpy as np


class SeriesRing:
    """Fixed-capacity ring of float64 rows; ``view()`` is the newest rows, oldest first."""

    def __init__(self, capacity: int, ncols: int) -> None:
        if capacity < 1 or ncols < 1:
            raise ValueError("capacity and ncols must be positive")
        self.capacity = capacity
        self.ncols = ncols
        self._buf = np.zeros((2 * capacity, ncols), dtype=np.float64)
        self._next = 0          # slot the next row goes to (0 .. capacity-1)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, row: np.ndarray) -> None:
        i = self._next
        self._buf[i] = row
        self._buf[i + self.capacity] = row
        self._next = (i + 1) % self.capacity
        if self._count < self.capacity:
            self._count += 1

    def view(self) -> np.ndarray:
        """The stored rows, oldest first: a view, valid until the next append."""
        start = (self._next - self._count) % self.capacity
        return self._buf[start:start + self._count]

    def last(self) -> np.ndarray | None:
        if not self._count:
            return None
        return self._buf[(self._next - 1) % self.capacity]

    def clear(self) -> None:
        self._next = 0
        self._count = 0


class CoarseHistory:
    """Whole-session history in ``capacity`` buckets whose width doubles as needed."""

    def __init__(self, capacity: int, ncols: int, bucket_seconds: float = 0.5,
                 time_col: int = 0) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.ncols = ncols
        self.bucket_seconds = bucket_seconds
        self.time_col = time_col
        self._rows = np.zeros((capacity, ncols), dtype=np.float64)
        self._count = 0
        self._open: np.ndarray | None = None     # the bucket being filled
        self._open_start = 0.0

    def __len__(self) -> int:
        return self._count

    def add(self, row: np.ndarray) -> None:
        t = float(row[self.time_col])
        if self._open is None:
            self._open = row.astype(np.float64, copy=True)
            self._open_start = t
            return
        if t - self._open_start < self.bucket_seconds:
            np.maximum(self._open, row, out=self._open)
            return
        self._close_bucket()
        self._open = row.astype(np.float64, copy=True)
        self._open_start = t

    def _close_bucket(self) -> None:
        if self._open is None:
            return
        if self._count == self.capacity:
            # merge pairs: half the rows, twice the width; max keeps peaks and counter tops
            merged = self._rows.reshape(self.capacity // 2, 2, self.ncols).max(axis=1)
            self._rows[: self.capacity // 2] = merged
            self._count = self.capacity // 2
            self.bucket_seconds *= 2.0
        self._rows[self._count] = self._open
        self._count += 1
        self._open = None

    def view(self, include_open: bool = True) -> np.ndarray:
        """Closed buckets oldest first (a copy), plus the bucket being filled."""
        rows = self._rows[: self._count]
        if include_open and self._open is not None:
            return np.vstack([rows, self._open[None, :]])
        return rows.copy()

    def clear(self) -> None:
        self._count = 0
        self._open = None
