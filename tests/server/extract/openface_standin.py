#!/usr/bin/env python3
"""A STAND-IN for OpenFace 2.x ``FeatureExtraction``, for the adapter's tests: not OpenFace.

It analyses nothing. It checks what the adapter hands it (the explicit output flags, an input
path that is an inherited descriptor, ``/proc/self/fd/N`` or ``/dev/fd/N``, readable, non-empty
and Matroska; an output folder that is private and on a memory filesystem), then writes
``<out_dir>/<of>.csv`` in OpenFace 2.x's exact format (header and rows with a space after each
comma) with the fixed frames in :data:`FRAMES`, and ``<of>_of_details.txt`` as OpenFace does.
A failed check prints ``STAND-IN CHECK FAILED: …`` and exits 3.

Run without arguments it prints a usage line with a version, as a build that names one would.
``OPENFACE_STANDIN_MODE`` in the environment picks a misbehaviour: ``fail`` (writes a partial
CSV, exits 1), ``hang`` (writes a partial CSV, starts a grandchild, sleeps; both pids are
written to ``OPENFACE_STANDIN_PIDS``), ``nocsv`` (exits 0 having written no CSV).
Standard library only, so any ``python3`` runs it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

VERSION_LINE = "OpenFace FeatureExtraction 2.2.0 (painav test stand-in)"
MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"

# OpenFace 2.x: 17 intensities, and 18 presences (AU28 has a presence only)
AU_R = [f"{n:02d}" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)]
AU_C = [f"{n:02d}" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)]
EYE_LANDMARKS = 56

# (frame, confidence, success, {AU intensity by number}); unnamed intensities are 0. With the
# adapter's default threshold 0.8, frames 1, 4 and 5 are kept (5 sits exactly on it).
FRAMES: list[tuple[int, float, int, dict[str, float]]] = [
    (1, 0.98, 1, {"04": 2.5, "06": 1.0, "07": 1.75, "09": 0.5, "10": 0.25, "45": 0.5}),
    (2, 0.0, 0, {"04": 4.0, "45": 3.0}),
    (3, 0.5, 1, {"04": 3.0, "07": 2.0}),
    (4, 0.9, 1, {"04": 0.0, "06": 3.0, "07": 2.0, "09": 1.0, "10": 1.5, "45": 5.0}),
    (5, 0.8, 1, {"04": 1.0, "12": 4.0}),
    (6, 0.95, 0, {"04": 5.0}),
]
FPS = 30.0


def header() -> list[str]:
    names = ["frame", "face_id", "timestamp", "confidence", "success"]
    names += ["gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z"]
    names += ["gaze_angle_x", "gaze_angle_y"]
    for axis in ("x", "y", "X", "Y", "Z"):
        names += [f"eye_lmk_{axis}_{i}" for i in range(EYE_LANDMARKS)]
    names += ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    names += [f"AU{n}_r" for n in AU_R]
    names += [f"AU{n}_c" for n in AU_C]
    return names


def row(frame: int, confidence: float, success: int, aus: dict[str, float]) -> list[str]:
    values = [str(frame), "0", f"{(frame - 1) / FPS:.3f}", f"{confidence:.2f}", str(success)]
    values += ["0.1", "0.2", "-0.97", "-0.1", "0.2", "-0.97", "0.015", "0.2"]
    values += ["1.5"] * (5 * EYE_LANDMARKS)
    values += ["10.0", "-5.0", "500.0", "0.1", "-0.2", "0.05"]
    values += [f"{aus.get(n, 0.0):.2f}" for n in AU_R]
    values += ["1.00" if aus.get(n, 0.0) >= 1.0 else "0.00" for n in AU_C]
    return values


def csv_text(frames: list[tuple[int, float, int, dict[str, float]]]) -> str:
    lines = [", ".join(header())] + [", ".join(row(*frame)) for frame in frames]
    return "\n".join(lines) + "\n"


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"STAND-IN CHECK FAILED: {what}", file=sys.stderr)
        sys.exit(3)


def filesystem_type(path: str) -> str:
    target, best, fstype = os.path.realpath(path), "", ""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            point, kind = line.split()[1:3]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fstype = point, kind
    return fstype


def value(args: list[str], flag: str) -> str:
    check(args.count(flag) == 1 and args.index(flag) + 1 < len(args), f"{flag} <value> once")
    return args[args.index(flag) + 1]


def main(args: list[str]) -> int:
    if not args:
        print(VERSION_LINE)
        print("For command line arguments see:")
        print(" https://github.com/TadasBaltrusaitis/OpenFace/wiki/Command-line-arguments")
        return 0
    for flag in ("-aus", "-pose", "-gaze"):
        check(flag in args, f"the explicit output flag {flag}")
    for flag in ("-simalign", "-hogalign", "-tracked", "-2Dfp", "-3Dfp", "-pdmparams"):
        check(flag not in args, f"no {flag}: only AUs, pose and gaze are wanted")
    source, out_dir, name = value(args, "-f"), value(args, "-out_dir"), value(args, "-of")
    prefix = next((p for p in ("/proc/self/fd/", "/dev/fd/") if source.startswith(p)), None)
    check(prefix is not None, f"the input is an inherited descriptor, not {source}")
    number = int(source[len(prefix or "") :])
    check(number > 2 and stat.S_ISREG(os.fstat(number).st_mode), "the descriptor is a file")
    check(os.readlink(f"/proc/self/fd/{number}").startswith("/memfd:"), "it is a memory file")
    with open(source, "rb") as clip:  # opened by path, as OpenCV does
        data = clip.read()
    check(len(data) > 0, "the input is not empty")
    check(data.startswith(MATROSKA_MAGIC), "the input is Matroska (EBML magic)")
    check(os.path.isdir(out_dir), "out_dir exists")
    check(stat.S_IMODE(os.stat(out_dir).st_mode) == 0o700, "out_dir is private (0700)")
    check(filesystem_type(out_dir) in ("tmpfs", "ramfs"), "out_dir is on a memory filesystem")
    check(not os.listdir(out_dir), "out_dir starts empty")

    mode = os.environ.get("OPENFACE_STANDIN_MODE", "ok")
    csv_path = os.path.join(out_dir, f"{name}.csv")
    with open(os.path.join(out_dir, f"{name}_of_details.txt"), "w", encoding="utf-8") as out:
        out.write(f"Input:{source}\n")
    if mode == "nocsv":
        return 0
    with open(csv_path, "w", encoding="utf-8") as out:
        out.write(csv_text(FRAMES if mode == "ok" else FRAMES[:2]))
    if mode == "fail":
        print("ERROR: a stand-in failure, as when OpenFace cannot load its models")
        return 1
    if mode == "hang":
        grandchild = subprocess.Popen(["sleep", "600"])
        with open(os.environ["OPENFACE_STANDIN_PIDS"], "w", encoding="utf-8") as out:
            out.write(f"{os.getpid()} {grandchild.pid} {out_dir}\n")
        time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
