"""The clip envelope: age v1 files to X25519 recipients, written and read as streams.

The unit writes a clip push-style while it records (:class:`EnvelopeWriter`) and can never read
it back; the hospital reads it with the data key (:class:`EnvelopeReader`), which releases a
chunk only after it has authenticated it. Memory stays flat whatever the clip length. Any
standard age tool reads what the writer produces::

    with open("clip.age", "wb") as f, EnvelopeWriter(f, ["age1…"]) as env:
        env.write(media_bytes)

    with open("clip.age", "rb") as f, EnvelopeReader(f, [identity]) as env:
        for chunk in env:
            ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import BinaryIO, Protocol

from .errors import EnvelopeError, HeaderError, NoIdentityMatchError, PayloadError
from .format import Header, header_mac, parse_header, verify_header_mac
from .stream import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, NONCE_SIZE, BytesLike, StreamCipher
from .x25519 import STANZA_TYPE, X25519Identity, X25519Recipient

__all__ = ["EnvelopeReader", "EnvelopeWriter", "Readable", "Writable"]

_FILE_KEY_SIZE = 16
_MAX_LINE = 64 * 1024
# Chunks are sealed and opened 16 at a time through one buffer: one system call per MiB
# instead of per 64 KiB halves the I/O cost, and memory stays at about 1 MiB per stream.
_BATCH = 16


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _recipients(values: Sequence[str | X25519Recipient]) -> list[X25519Recipient]:
    if isinstance(values, str | X25519Recipient):
        raise TypeError("recipients must be a sequence, not a single recipient")
    out = [v if isinstance(v, X25519Recipient) else X25519Recipient.from_string(v) for v in values]
    if not out:
        raise EnvelopeError("a clip needs at least one recipient")
    return out


def _write_all(file: Writable | BinaryIO, data: memoryview) -> None:
    """Write all of *data*, looping over the short writes a raw file or socket may make."""
    while data:
        written = file.write(data)
        if not isinstance(written, int) or written >= len(data):
            return
        data = data[written:]


class _WriteBehind:
    """Writes buffers to a file on one background thread, in order and one at a time, so that
    sealing the next batch overlaps the system call for this one (and a slow SD card does not
    stall the recorder). An error in the thread surfaces at the next call."""

    def __init__(self, file: Writable | BinaryIO) -> None:
        self._file = file
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: Future[None] | None = None

    def submit(self, data: memoryview) -> None:
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="envelope-write")
        self._inflight = self._executor.submit(_write_all, self._file, data)

    def wait(self) -> None:
        """Block until the write in flight is done; raise its error, if any."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def stop(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None


class EnvelopeWriter:
    """Encrypts a stream to one or more ``age1…`` recipients, writing to *fileobj* as it goes.

    The header is written at once. Each 64 KiB of plaintext is sealed as soon as the writer
    knows it is not the last; sealed chunks go out in writes of up to 1 MiB, made by a
    background thread while the next ones are sealed (so *fileobj* must tolerate being written
    from another thread, as files and sockets do). The caller must call :meth:`close` (or leave
    the ``with`` block) to seal and write the last chunk: a file not closed is detectably
    truncated. The writer never seeks and never closes *fileobj*. After an error from *fileobj*
    every later call raises :class:`EnvelopeError`.
    """

    def __init__(
        self, fileobj: Writable | BinaryIO, recipients: Sequence[str | X25519Recipient]
    ) -> None:
        self._file = fileobj
        file_key = os.urandom(_FILE_KEY_SIZE)
        header = Header([r.wrap(file_key) for r in _recipients(recipients)])
        header.mac = header_mac(file_key, header)
        nonce = os.urandom(NONCE_SIZE)
        self._cipher = StreamCipher(file_key, nonce)
        self._pending = bytearray()  # at most one chunk, held until we know whether it is last
        # Two batch buffers: one being sealed into while the other is being written.
        self._buffers = (
            bytearray(_BATCH * ENCRYPTED_CHUNK_SIZE),
            bytearray(_BATCH * ENCRYPTED_CHUNK_SIZE),
        )
        self._current = 0
        self._out_len = 0
        self._behind = _WriteBehind(fileobj)
        self._closed = False
        self._error: BaseException | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        start = header.encode() + nonce
        _write_all(fileobj, memoryview(start))
        self.bytes_out = len(start)

    def _seal(self, chunk: BytesLike, last: bool) -> None:
        if self._out_len + ENCRYPTED_CHUNK_SIZE > len(self._buffers[0]):
            self._write_out()
        out = memoryview(self._buffers[self._current])[self._out_len :]
        self._out_len += self._cipher.seal_into(chunk, last, out)

    def _guard(self, action: Callable[[], None]) -> None:
        """Run an action that writes to the file, making any error from it sticky."""
        try:
            action()
        except BaseException as exc:
            self._error = exc
            raise

    def _write_out(self) -> None:
        if self._out_len:
            data = memoryview(self._buffers[self._current])[: self._out_len]
            self._guard(lambda: self._behind.submit(data))
            self.bytes_out += self._out_len
            self._current ^= 1
            self._out_len = 0

    def flush(self) -> None:
        """Write out every chunk sealed so far (the last partial chunk stays pending)."""
        self._check()
        self._write_out()
        self._guard(self._behind.wait)
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            self._guard(flush)

    def _check(self) -> None:
        if self._error is not None:
            raise EnvelopeError("an earlier write to the envelope failed") from self._error
        if self._closed:
            raise ValueError("write to a closed EnvelopeWriter")

    def write(self, data: BytesLike) -> int:
        """Encrypt and write *data* (any bytes-like); returns its length."""
        self._check()
        view = memoryview(data).cast("B")
        size = len(view)
        pending = self._pending
        if pending:
            room = CHUNK_SIZE - len(pending)
            if size <= room:
                pending += view
                self.bytes_in += size
                return size
            pending += view[:room]
            view = view[room:]
            self._seal(pending, last=False)  # more data follows, so it is not the last
            pending.clear()
        # Whole chunks straight from the caller's buffer: no copy for large writes.
        while len(view) > CHUNK_SIZE:
            self._seal(view[:CHUNK_SIZE], last=False)
            view = view[CHUNK_SIZE:]
        pending += view
        self.bytes_in += size
        return size

    def close(self) -> None:
        """Seal and write the last chunk, and wait until it is written. Idempotent; does not
        close *fileobj*."""
        if self._closed:
            return
        self._check()
        self._seal(self._pending, last=True)
        self._write_out()
        self._guard(self._behind.stop)
        self._pending = bytearray()
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EnvelopeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop without sealing: the file is left without a last chunk, which readers reject,
        so a half-written clip can never pass for a complete one. Waits for the write in
        flight, so *fileobj* may be closed afterwards."""
        self._closed = True
        with contextlib.suppress(BaseException):
            self._behind.stop()


class _Source:
    """A small read buffer over any file-like object: lines for the header, then raw bytes."""

    def __init__(self, fileobj: Readable | BinaryIO) -> None:
        self._file = fileobj
        self._buf = bytearray()
        self._readinto = getattr(fileobj, "readinto", None)

    def readline(self) -> bytes:
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) >= _MAX_LINE:
                raise HeaderError("header line longer than 64 KiB: not an age file")
            start = len(self._buf)
            data = self._file.read(4096)
            if not data:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._buf += data

    def fill(self, view: memoryview) -> int:
        """Read into *view* until it is full or the file ends; returns the count."""
        got = min(len(self._buf), len(view))
        if got:
            view[:got] = self._buf[:got]
            del self._buf[:got]
        while got < len(view):
            if self._readinto is not None:
                n = self._readinto(view[got:])
            else:
                data = self._file.read(len(view) - got)
                n = len(data)
                view[got : got + n] = data
            if not n:
                break
            got += n
        return got


class EnvelopeReader:
    """Decrypts an age v1 file with X25519 identities, as a stream of authenticated bytes.

    The header is read and checked when the reader is made: :class:`HeaderError` for a
    malformed header, :class:`NoIdentityMatchError` when no identity fits,
    :class:`HeaderMacError` when the header was altered. Reading raises
    :class:`PayloadError` on the first chunk that fails authentication or on a file that
    ends without a valid last chunk, after releasing only the chunks before it; trailing
    data after the last chunk is a defect too. End of file (``b""``) is returned only after
    the last chunk authenticated.
    """

    def __init__(
        self, fileobj: Readable | BinaryIO, identities: Sequence[str | X25519Identity]
    ) -> None:
        ids = [
            i if isinstance(i, X25519Identity) else X25519Identity.from_string(i)
            for i in identities
        ]
        self._source = _Source(fileobj)
        header = parse_header(self._source.readline)
        file_key = self._unwrap(header, ids)
        verify_header_mac(file_key, header)
        self.header = header
        nonce = bytearray(NONCE_SIZE)
        if self._source.fill(memoryview(nonce)) != NONCE_SIZE:
            # The kit files this under header failures: no payload has begun.
            raise HeaderError("file ends before the payload nonce is complete")
        self._cipher = StreamCipher(file_key, bytes(nonce))
        self._in = bytearray(_BATCH * ENCRYPTED_CHUNK_SIZE + 1)
        self._start = self._end = 0  # the unread part of _in
        self._out = bytearray(CHUNK_SIZE)  # plaintext, exposed only once authenticated
        self._error: PayloadError | None = None
        self._trailing = False
        self._plain = memoryview(b"")
        self._eof = False
        self._closed = False

    @staticmethod
    def _unwrap(header: Header, identities: list[X25519Identity]) -> bytes:
        for identity in identities:
            for stanza in header.stanzas:
                if stanza.type != STANZA_TYPE:
                    continue  # another recipient type, e.g. a plugin's: not ours to judge
                file_key = identity.unwrap(stanza)
                if file_key is not None:
                    return file_key
        raise NoIdentityMatchError("no identity matches any recipient of this file")

    def _next_chunk(self) -> None:
        """Authenticate the next chunk into the plaintext buffer and expose it as ``_plain``."""
        if self._trailing:
            self._eof = True
            raise PayloadError("trailing data after the last chunk")
        if self._end - self._start <= ENCRYPTED_CHUNK_SIZE:
            # Keep one byte of look-ahead past a full chunk: it tells a full last chunk
            # from one with more after it.
            rest = self._end - self._start
            self._in[:rest] = self._in[self._start : self._end]
            self._start, self._end = 0, rest + self._source.fill(memoryview(self._in)[rest:])
        available = self._end - self._start
        view = memoryview(self._in)[self._start : self._end]
        if available == 0:
            self._eof = True
            raise PayloadError(
                f"file is truncated: it ends after chunk {self._cipher.chunks} without a last chunk"
            )
        if available < ENCRYPTED_CHUNK_SIZE:
            self._eof = True
            size = self._cipher.open_into(view, True, self._out)
        else:
            chunk = view[:ENCRYPTED_CHUNK_SIZE]
            more = available > ENCRYPTED_CHUNK_SIZE
            try:
                size = self._cipher.open_into(chunk, False, self._out)
            except PayloadError:
                # A full-size chunk may be the last one; if it opens as such it is authentic,
                # and anything after it is a defect reported on the next read.
                size = self._cipher.open_into(chunk, True, self._out)
                self._trailing = more
                self._eof = not more
            self._start += ENCRYPTED_CHUNK_SIZE
        self._plain = memoryview(self._out)[:size]

    def _fill_plain(self) -> bool:
        """Make ``_plain`` non-empty unless the payload is over; False at the end."""
        self._check_open()
        if self._error is not None:
            raise self._error
        while not self._plain and not self._eof:
            self._next_chunk()
        return bool(self._plain)

    def chunks(self) -> Iterator[bytes]:
        """Yield the plaintext chunk by chunk, each authenticated before it is yielded."""
        while self._fill_plain():
            chunk, self._plain = bytes(self._plain), memoryview(b"")
            yield chunk

    __iter__ = chunks

    def read(self, size: int = -1) -> bytes:
        """Read up to *size* authenticated bytes (all that is left if negative)."""
        if size < 0:
            return b"".join(self.chunks())
        if not self._fill_plain():
            return b""
        out, self._plain = self._plain[:size], self._plain[size:]
        return bytes(out)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill *buffer* with authenticated bytes as far as the file goes, returning the count:
        the fastest way to read, as it allocates nothing. An error after some bytes were
        copied is raised by the next call, so those authentic bytes are not lost."""
        view = memoryview(buffer).cast("B")
        got = 0
        while got < len(view):
            try:
                if not self._fill_plain():
                    break
            except PayloadError as exc:
                if not got:
                    raise
                self._error = exc
                break
            n = min(len(view) - got, len(self._plain))
            view[got : got + n] = self._plain[:n]
            self._plain = self._plain[n:]
            got += n
        return got

    def readable(self) -> bool:
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("read from a closed EnvelopeReader")

    def close(self) -> None:
        """Stop reading. Does not close the underlying file."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EnvelopeReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
