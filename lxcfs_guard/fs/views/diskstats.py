"""/proc/diskstats with a cgroup's own I/O per device (v1 blkio, v2 io.stat; LXCFS shows the host on v2,
#653). Devices the cgroup never touched are left out, as LXCFS does. Times are in ms, sectors are 512 B."""

from __future__ import annotations

from lxcfs_guard.cgroup.facts import IoStat
from lxcfs_guard.fs.views.memo import per_host_text


@per_host_text
def _devices(host: str) -> list[tuple[tuple[int, int], str]]:
    """The host's devices in its order: ((major, minor), name)."""
    out = []
    for line in host.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        try:
            out.append(((int(parts[0]), int(parts[1])), parts[2]))
        except ValueError:
            continue
    return out


def render_diskstats(host: str, io: dict[tuple[int, int], IoStat]) -> str:
    if not io:
        return ""
    out: list[str] = []
    for dev, name in _devices(host):
        st = io.get(dev)
        if st is None or not (st.rbytes or st.wbytes or st.rios or st.wios or st.dbytes or st.dios):
            continue
        rticks = (st.rtime_ns + st.rwait_ns) // 1_000_000
        wticks = (st.wtime_ns + st.wwait_ns) // 1_000_000
        io_ticks = (st.rtime_ns + st.wtime_ns) // 1_000_000
        fields = [
            st.rios,
            st.rmerged,
            st.rbytes // 512,
            rticks,
            st.wios,
            st.wmerged,
            st.wbytes // 512,
            wticks,
            0,
            io_ticks,
            rticks + wticks,
            st.dios,
            0,
            st.dbytes // 512,
            0,
            0,
            0,
        ]
        out.append(f"{dev[0]:4d} {dev[1]:7d} {name} " + " ".join(map(str, fields)))
    return "".join(line + "\n" for line in out)
