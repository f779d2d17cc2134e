"""
Auto-pipelining: the scripts of concurrent calls to one Redis node share
one connection, and those issued in the same turn of the event loop go out
in one write.

Redis answers a connection's commands in the order they were sent, so the
replies are handed out in order to whoever sent each command: an awaiting
caller (a future) or a callback (a settle sent in the background). With
hiredis (the ``redis`` extra) they are parsed as the data arrives, by the
connection's protocol; otherwise a task reads them with redis-py. Commands
a process sends on one pipe reach Redis in the order they were issued,
whichever caller issued them.

A pipe is made from a pooled connection that has just answered, and is
given up at the first sign of trouble: the connection lost or closed, or a
reply later than the timeout. Every command still waiting then fails with
that error; the callers send theirs again on the pool's connections (the
scripts are idempotent).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, TypeAlias

from redis._parsers import hiredis as _hiredis
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

__all__ = ["Done", "Pipe"]

Done: TypeAlias = Callable[[Any, BaseException | None], None]
"""What a reply sent in the background goes to: the reply, or the error."""

_Sink: TypeAlias = "asyncio.Future[Any] | Done"


class Pipe:
    """
    One connection shared by concurrent callers.

    Args:
        conn: A connected redis-py connection, the pipe's from now on.
        timeout: Seconds a reply may take; later, the pipe is given up.
        on_reply: Called once per reply (or failure) handed out.
    """

    __slots__ = (
        "_flushing",
        "_on_reply",
        "_out",
        "_reader",
        "_timer",
        "_waiting",
        "conn",
        "error",
        "loop",
        "timeout",
    )

    def __init__(self, conn: Any, timeout: float, on_reply: Callable[[], None]) -> None:
        self.conn = conn
        self.timeout = timeout
        self._on_reply = on_reply
        self.loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        # Sent (or about to be), in order: the sink and its deadline.
        self._waiting: collections.deque[tuple[_Sink, float]] = collections.deque()
        self._flushing = False
        self._timer: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None  # set once given up
        self._reader: asyncio.Task[None] | None = None
        parser = conn._parser
        if isinstance(parser, _AsyncHiredisParser) and not conn._reader._buffer:
            # The replies parsed as they arrive: no task to wake per read.
            conn._writer.transport.set_protocol(_Replies(self, parser._reader))
        else:
            self._reader = self.loop.create_task(self._read())

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """
        Queue *command* for this turn's write; a future of its reply.
        """
        future = self.loop.create_future()
        self.push(command, future)
        if len(self._waiting) == len(self._out):
            # Nothing on its way to batch with: don't wait for the turn's
            # end (with whatever was queued in the background before it).
            self._flush()
        return future

    def push(self, command: bytes, sink: _Sink) -> None:
        """
        Queue *command*; its reply (or error) goes to *sink*. No await: the
        order of pushes is the order Redis runs them in.
        """
        deadline = self.loop.time() + self.timeout
        self._out.append(command)
        self._waiting.append((sink, deadline))
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check)

    def _flush(self) -> None:
        self._flushing = False
        if self.error is not None or not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        writer = self.conn._writer
        if writer is None:
            self.fail(RedisConnectionError("the connection was closed"))
            return
        # Not awaited (drain): the replies, read at the pace Redis answers,
        # bound what is queued.
        writer.write(data)

    def _check(self) -> None:
        # The oldest command's deadline: given up if it passed unanswered.
        self._timer = None
        if not self._waiting or self.error is not None:
            return
        deadline = self._waiting[0][1]
        if deadline <= self.loop.time():
            self.fail(TimeoutError(f"no answer within {self.timeout:g} s"))
        else:
            self._timer = self.loop.call_at(deadline, self._check)

    async def _read(self) -> None:
        conn = self.conn
        while True:
            try:
                # Closing it on an error is fail()'s: the pipe's, not redis-py's.
                reply: Any = await conn.read_response(disconnect_on_error=False)
            except ResponseError as exc:
                reply = exc
            except Exception as exc:  # lost or closed
                self.fail(exc)
                return
            except BaseException:  # cancelled: given up, or the loop ends
                self.fail(RedisConnectionError("the connection was closed"))
                raise
            if not self.reply(reply):
                return

    def reply(self, reply: Any) -> bool:
        """
        Hand *reply* to the oldest command's sink; False if the pipe was
        given up instead.
        """
        if isinstance(reply, RedisConnectionError | ReadOnlyError):
            # A connection refused in mid-use, or a demoted primary (a
            # Sentinel's failover): the pool's connections find the new one.
            self.fail(RedisConnectionError(str(reply)))
            return False
        if not self._waiting:  # nothing asked: the connection is out of step
            self.fail(RedisConnectionError("an unexpected reply"))
            return False
        _hand(self._waiting.popleft()[0], reply)
        self._on_reply()
        return True

    def fail(self, error: BaseException) -> None:
        """
        Give the pipe up: every command waiting fails with *error*, and the
        connection is closed (without awaiting). Idempotent.
        """
        if self.error is not None:
            return
        self.error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        writer = self.conn._writer
        if writer is not None:
            self.conn._reader = self.conn._writer = None
            writer.close()
        waiting = self._waiting
        while waiting:
            _hand(waiting.popleft()[0], error)
            self._on_reply()

    def abandon(self) -> list[Done]:
        """
        Forget the waiting commands without handing them anything (their
        event loop has ended); return the callbacks among their sinks, for
        the caller to hand the error to on its own loop.
        """
        self.error = RedisConnectionError("the event loop ended")
        done = [s for s, _ in self._waiting if not isinstance(s, asyncio.Future)]
        self._waiting.clear()
        self._out.clear()
        return done


class _Replies(asyncio.Protocol):
    """
    The protocol of a pipe's connection with hiredis: replies parsed and
    handed out as the data arrives.
    """

    def __init__(self, pipe: Pipe, reader: Any) -> None:
        self.pipe = pipe
        self.reader = reader

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False and reply is not _MORE:
                if not self.pipe.reply(reply):
                    return
        except Exception as exc:  # a reply hiredis can't parse
            self.pipe.fail(RedisConnectionError(f"{type(exc).__name__}: {exc}"))

    def eof_received(self) -> None:
        self.pipe.fail(RedisConnectionError("the server closed the connection"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.fail(RedisConnectionError(f"the connection was lost: {exc}"))


# What redis-py's hiredis reader returns while a reply is incomplete (older
# versions: False).
_MORE = getattr(_hiredis, "NOT_ENOUGH_DATA", False)


def _hand(sink: _Sink, reply: Any) -> None:
    if isinstance(sink, asyncio.Future):
        if not sink.done():  # its caller may have left
            if isinstance(reply, BaseException):
                sink.set_exception(reply)
            else:
                sink.set_result(reply)
    elif isinstance(reply, BaseException):
        sink(None, reply)
    else:
        sink(reply, None)
