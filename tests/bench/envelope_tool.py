"""The envelope as a command, doing what ``age`` does in the benchmark: stream a file in,
encrypt or decrypt it, stream it out. Prints the seconds the library took, from opening the
files to closing them: painav runs the envelope inside long-lived processes, so interpreter
start-up is not part of its cost."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from protocol.envelope import EnvelopeReader, EnvelopeWriter
from protocol.x25519 import X25519Identity

_BLOCK = 1 << 20


def main(argv: list[str]) -> int:
    mode, key, src_path, dst_path = argv
    start = time.perf_counter()
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        if mode == "encrypt":
            buffer = memoryview(bytearray(_BLOCK))
            with EnvelopeWriter(dst, [key]) as writer:
                while n := src.readinto(buffer):
                    writer.write(buffer[:n])
        else:
            identity = X25519Identity.from_string(Path(key).read_text().splitlines()[-1])
            buffer = memoryview(bytearray(_BLOCK))
            with EnvelopeReader(src, [identity]) as reader:
                while n := reader.readinto(buffer):
                    dst.write(buffer[:n])
    print(f"{time.perf_counter() - start:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
