"""``ReplayBar``: play / pause and a time slider for a ``ReplayFeed``.

The slider works in tenths of a second of target time; dragging it seeks the feed (which rebuilds
the model when going backwards), and the feed's ``positionChanged`` moves the slider back
without re-seeking (signals blocked while we set it).
"""
from __future__ import annotations

from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QSlider, QWidget

from app.feeds import ReplayFeed
from app.units import format_clock


class ReplayBar(QWidget):
    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.feed: Optional[ReplayFeed] = None
        self.play_button = QPushButton("Play")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimumWidth(300)
        self.speed_box = QComboBox()
        for s in (1, 2, 5, 10):
            self.speed_box.addItem(f"{s}×", float(s))
        self.position_label = QLabel("")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(QLabel("Recording:"))
        layout.addWidget(self.play_button)
        layout.addWidget(self.speed_box)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.position_label)
        self.play_button.clicked.connect(self._toggle)
        self.slider.valueChanged.connect(self._slid)

    def set_feed(self, feed: Optional[ReplayFeed]) -> None:
        self.feed = feed
        self.setVisible(feed is not None)
        if feed is None:
            return
        self.slider.setRange(0, int(feed.duration * 10))
        feed.positionChanged.connect(self._moved)
        self._moved(feed.position)

    def _toggle(self) -> None:
        if self.feed is None:
            return
        if self.feed.playing:
            self.feed.pause()
        else:
            self.feed.play(self.speed_box.currentData())
        self.play_button.setText("Pause" if self.feed.playing else "Play")

    def _slid(self, value: int) -> None:
        if self.feed is not None:
            # the slider's tenths round the duration down: its right end means "everything"
            at_end = value >= self.slider.maximum()
            self.feed.seek(self.feed.duration if at_end else value / 10.0)

    def _moved(self, position: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(int(position * 10))
        self.slider.blockSignals(False)
        if self.feed is not None:
            self.position_label.setText(f"{format_clock(round(position, 1))} / "
                                        f"{format_clock(round(self.feed.duration, 1))}")
            if not self.feed.playing:
                self.play_button.setText("Play")
