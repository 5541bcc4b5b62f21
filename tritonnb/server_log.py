"""The server's log file: tritonserver's output, PyTriton's and tritonnb's messages, model tracebacks."""

from __future__ import annotations

import collections
import logging
import pathlib
import threading

WATCHED_LOGGERS = ("pytriton", "tritonnb")


class ServerLog:
    """An append-only log file shared by the tritonserver output reader and Python logging."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._handler = _SinkHandler(self)
        self._saved: dict[str, tuple[bool, int]] = {}  # logger name -> (propagate, level) before capture

    def write(self, text: str) -> None:
        """Append text (a line from tritonserver, or a message) to the file."""
        with self._lock:
            if not self._file.closed:
                self._file.write(text if text.endswith("\n") else text + "\n")
                self._file.flush()

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        if not self.path.exists():
            return ""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            return "".join(collections.deque(f, maxlen=max(lines, 0)))

    def capture_python_logging(self) -> None:
        """Send PyTriton's and tritonnb's log records here instead of the notebook's cells."""
        for name in WATCHED_LOGGERS:
            logger = logging.getLogger(name)
            self._saved[name] = (logger.propagate, logger.level)
            logger.addHandler(self._handler)
            logger.propagate = False
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)

    def close(self) -> None:
        """Stop capturing Python logging (loggers as they were before) and close the file (the file itself stays)."""
        for name, (propagate, level) in self._saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self._handler)
            logger.propagate = propagate
            logger.setLevel(level)
        self._saved.clear()
        with self._lock:
            self._file.close()


class _SinkHandler(logging.Handler):
    def __init__(self, log: ServerLog) -> None:
        super().__init__()
        self._log = log
        self.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log.write(self.format(record))
        except Exception:  # a log line must never break serving
            self.handleError(record)
