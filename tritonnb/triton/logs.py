"""The server's log file: tritonserver's output, PyTriton's and tritonnb's messages, model tracebacks."""

from __future__ import annotations

import collections
import logging
import pathlib
import threading

__all__ = ["WATCHED_LOGGERS", "ServerLog"]

WATCHED_LOGGERS = ("pytriton", "tritonnb")


class ServerLog:
    """An append-only log file shared by the tritonserver output reader and Python logging."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

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
        _CAPTURE.add(self)

    def close(self) -> None:
        """Stop capturing Python logging and close the file (the file itself stays)."""
        _CAPTURE.remove(self)
        with self._lock:
            self._file.close()


class _Capture(logging.Handler):
    """One handler on PyTriton's and tritonnb's loggers for the whole process, writing to every open server log.

    A stopped server's log stays open while its models' threads retire, possibly beside a new server's: each record
    goes to both. When the last log closes, the loggers get back their own level and propagation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
        self._logs: list[ServerLog] = []
        self._saved: dict[str, tuple[bool, int]] = {}  # logger name -> (propagate, level) before the capture
        self._guard = threading.Lock()

    def add(self, log: ServerLog) -> None:
        with self._guard:
            if not self._logs:
                for name in WATCHED_LOGGERS:
                    logger = logging.getLogger(name)
                    self._saved[name] = (logger.propagate, logger.level)
                    logger.addHandler(self)
                    logger.propagate = False
                    if logger.level == logging.NOTSET:
                        logger.setLevel(logging.INFO)
            self._logs.append(log)

    def remove(self, log: ServerLog) -> None:
        with self._guard:
            if log not in self._logs:
                return
            self._logs.remove(log)
            if not self._logs:
                for name, (propagate, level) in self._saved.items():
                    logger = logging.getLogger(name)
                    logger.removeHandler(self)
                    logger.propagate = propagate
                    logger.setLevel(level)
                self._saved.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            for log in list(self._logs):
                log.write(text)
        except Exception:  # a log line must never break serving
            self.handleError(record)


_CAPTURE = _Capture()
