"""The FUSE wire format (include/uapi/linux/fuse.h) for the few messages we write or parse ourselves: the
fast path's requests and replies (fs/fastpath.py) and the holder's notifications (fs/connection.py)."""

from __future__ import annotations

import struct

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error (a notification: its code), unique (0: a notification)
OPEN_IN = struct.Struct("<II")  # flags, open_flags
OPEN_OUT = struct.Struct("<QII")  # fh, open_flags, padding
READ_IN = struct.Struct("<QQI")  # fh, offset, size (then read_flags, lock_owner, flags, padding)
RELEASE_IN = struct.Struct("<Q")  # fh (then flags, release_flags, lock_owner)

FUSE_OPEN = 14
FUSE_READ = 15
FUSE_RELEASE = 18
FUSE_FLUSH = 25
FUSE_OPENDIR = 27
FUSE_NOTIFY_RESEND = 7  # enum fuse_notify_code (Linux 6.9)
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
