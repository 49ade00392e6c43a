"""``OutstandingOpsTable``: the in-flight ops as a sortable, filterable Qt table.

Qt model/view, updated ~10 times a second without flicker and without losing the selection.
The trap is ``beginResetModel()``: it is the easy way to show new data and it throws away the
selection, the scroll position and the current index every time.  ``OutstandingOpsModel.sync()``
instead diffs by op id against the ``SessionModel``'s table and tells the view exactly what
changed — ``beginRemoveRows`` for ops that ended (contiguous runs, bottom up, so indices stay
valid), ``beginInsertRows`` at the end for new ops, ``dataChanged`` only for rows whose content
changed, and a plain viewport repaint for the ages (they all grow alike, so the sort order by
age never changes and the proxy has nothing to redo).  The ``QSortFilterProxyModel`` on top re-sorts and
re-filters incrementally and keeps the selection through all of it because it uses persistent
indexes.

Sorting uses ``Qt.UserRole`` (raw numbers), display uses ``DisplayRole`` (formatted text), so
"12.0 s" sorts after "850 ms".  Rows older than ``long_pending`` seconds are highlighted with a
translucent warm background that reads over the light and the dark palette.
"""
from __future__ import annotations

from typing import Any, Optional

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QTableView, QVBoxLayout,
    QWidget,
)

from app.model.ops import OpRow
from app.units import format_bytes, format_duration
from app.widgets.theme import HIGHLIGHT_LONG_PENDING

COLUMNS = ("id", "kind", "fd / peer", "bytes", "age", "state")
COL_ID, COL_KIND, COL_PEER, COL_BYTES, COL_AGE, COL_STATE = range(len(COLUMNS))


class OutstandingOpsModel(QAbstractTableModel):
    """Rows mirror ``SessionModel.ops.rows``; see the module docstring for ``sync``."""

    def __init__(self, parent=None, long_pending: float = 1.0) -> None:
        super().__init__(parent)
        self._rows: list[OpRow] = []
        self._index: dict[int, int] = {}       # op_id -> row
        self._sigs: dict[int, tuple] = {}      # op_id -> what the row showed (change detection)
        self._now = 0.0
        self.long_pending = long_pending
        self._italic = QFont()
        self._italic.setItalic(True)

    # ---------------------------------------------------------------- Qt model API
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        op = self._rows[index.row()]
        col = index.column()
        age = max(0.0, self._now - op.submit_t)
        if role == Qt.ItemDataRole.DisplayRole:
            if col == COL_ID:
                return str(op.op_id)
            if col == COL_KIND:
                return op.kind
            if col == COL_PEER:
                return op.endpoint
            if col == COL_BYTES:
                return format_bytes(op.nbytes)
            if col == COL_AGE:
                return format_duration(age)
            if col == COL_STATE:
                return "cancel requested" if op.cancel_requested else "pending"
        elif role == Qt.ItemDataRole.UserRole:      # sort key
            return (op.op_id, op.kind, op.endpoint, op.nbytes, age,
                    int(op.cancel_requested))[col]
        elif role == Qt.ItemDataRole.BackgroundRole:
            if age >= self.long_pending:
                return HIGHLIGHT_LONG_PENDING
        elif role == Qt.ItemDataRole.FontRole:
            if op.cancel_requested:
                return self._italic
        elif role == Qt.ItemDataRole.TextAlignmentRole:
            if col in (COL_ID, COL_BYTES, COL_AGE):
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        elif role == Qt.ItemDataRole.ToolTipRole:
            return (f"op {op.op_id} {op.kind} on {op.endpoint}: requested {op.requested} B, "
                    f"buffer {op.buffer_size} B, pending {format_duration(age)}")
        return None

    # ---------------------------------------------------------------- in-place sync
    def op_at(self, row: int) -> OpRow:
        return self._rows[row]

    def sync(self, source: dict[int, OpRow], now: float) -> None:
        """Make the rows match ``source`` (op id -> OpRow) with minimal change signals."""
        self._now = now
        gone = [i for i, op in enumerate(self._rows) if op.op_id not in source]
        if gone:
            # remove contiguous runs from the bottom up so earlier indices stay valid
            runs: list[list[int]] = []
            for i in gone:
                if runs and runs[-1][1] == i - 1:
                    runs[-1][1] = i
                else:
                    runs.append([i, i])
            for first, last in reversed(runs):
                self.beginRemoveRows(QModelIndex(), first, last)
                del self._rows[first:last + 1]
                self.endRemoveRows()
            self._index = {op.op_id: i for i, op in enumerate(self._rows)}
        # refresh row objects (an Outstanding snapshot replaces them) and append new ones;
        # a row's *content* changes rarely (a buffer pinned, a cancel requested): only those
        # rows get dataChanged, because every dataChanged row is re-sorted and re-filtered by
        # the proxy through Python data() calls (all rows each tick: 90 ms at 5 000 rows)
        fresh: list[OpRow] = []
        changed: list[int] = []
        sigs = self._sigs
        for op_id, op in source.items():
            i = self._index.get(op_id)
            if i is None:
                fresh.append(op)
                continue
            sig = (op.nbytes, op.cancel_requested, op.peer)
            if sigs.get(op_id) != sig:
                sigs[op_id] = sig
                changed.append(i)
            self._rows[i] = op
        for i in changed:
            self.dataChanged.emit(self.index(i, COL_PEER), self.index(i, COL_STATE))
        if fresh:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(fresh) - 1)
            for j, op in enumerate(fresh):
                self._index[op.op_id] = first + j
                sigs[op.op_id] = (op.nbytes, op.cancel_requested, op.peer)
            self._rows.extend(fresh)
            self.endInsertRows()
        if gone:
            live = self._index
            for op_id in [k for k in sigs if k not in live]:
                del sigs[op_id]
        # ages move by themselves, uniformly, so the age order never changes: the view just
        # repaints its visible cells (OutstandingOpsTable.refresh), no per-row signal needed


class OutstandingOpsTable(QWidget):
    """Filter box + sortable table view over ``OutstandingOpsModel``."""

    def __init__(self, parent: Optional[QWidget] = None, long_pending: float = 1.0) -> None:
        super().__init__(parent)
        self.model = OutstandingOpsModel(self, long_pending=long_pending)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setDynamicSortFilter(True)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter (kind, fd, peer, state…)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.count_label = QLabel("0 in flight")

        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(COL_AGE, Qt.SortOrder.DescendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setAlternatingRowColors(True)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(20)
        self.view.setWordWrap(False)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for col, width in ((COL_ID, 64), (COL_KIND, 70), (COL_PEER, 150), (COL_BYTES, 80),
                           (COL_AGE, 70)):
            self.view.setColumnWidth(col, width)

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        title = QLabel("<b>Outstanding operations</b>")
        top.addWidget(title)
        top.addStretch(1)
        top.addWidget(self.count_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.view, 1)

    def refresh(self, session) -> None:
        self.model.sync(session.ops.rows, session.target_now())
        self.view.viewport().update()          # ages and highlights of the visible rows
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        long_ = sum(1 for op in session.ops.rows.values()
                    if session.target_now() - op.submit_t >= self.model.long_pending)
        text = f"{total} in flight" if shown == total else f"{shown} of {total} shown"
        self.count_label.setText(text + (f" · {long_} > {self.model.long_pending:g} s"
                                         if long_ else ""))

    def selected_op_ids(self) -> list[int]:
        rows = {self.proxy.mapToSource(i).row() for i in self.view.selectionModel().selectedRows()}
        return sorted(self.model.op_at(r).op_id for r in rows)
