"""loadavg across processes: the sampler publishes into a shared table, a worker renders from it; a cgroup
not in the table yet reads as not sampled (no load, one task, as LXCFS answers; the worker never counts
threads itself) and is registered with the sampler over the socket. Fixture /proc and cgroup trees, the real
shared mapping and socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from lxcfs_guard.cgroup import V2Reader
from lxcfs_guard.fs.loadavg import (
    NOT_SAMPLED_YET,
    RETRY_UNPUBLISHED,
    LoadSampler,
    SharedLoad,
    make_table,
    publish,
)
from tests.unit.test_cgroup_readers import v2_tree, write_tree


def test_worker_reads_published_samples_and_registers_new_cgroups(tmp_path: Path) -> None:
    reader = V2Reader(str(v2_tree(tmp_path / "cg")))
    proc = tmp_path / "proc"
    write_tree(
        proc,
        {
            "5/task/5/stat": "5 (a b) R 1 2 3\n",
            "5/task/8/stat": "8 (a b) S 1 2 3\n",
            "6/task/6/stat": "6 (x) D 1 2 3\n",
        },
    )
    ref = reader.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n")
    table = make_table()
    to_sampler, sampler_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    to_sampler.setblocking(False)
    shared = SharedLoad(table, to_sampler)

    # first read: not published yet -> no load, one task, and the sampler is told
    assert shared.get(ref) == NOT_SAMPLED_YET == ((0, 0, 0), 0, 1)
    registered = json.loads(sampler_end.recv(65536))
    assert [tuple(p) for p in registered] == list(ref.paths)
    assert shared.get(ref) == NOT_SAMPLED_YET  # not sent again within a minute
    sampler_end.setblocking(False)
    try:
        sampler_end.recv(65536)
        raise AssertionError("registered twice")
    except BlockingIOError:
        pass

    # still not published RETRY_UNPUBLISHED later: the sampler dropped it (a cgroup made again), so it is
    # registered again at once, not after a minute
    shared._sent[ref] -= RETRY_UNPUBLISHED
    assert shared.get(ref) == NOT_SAMPLED_YET
    assert [tuple(p) for p in json.loads(sampler_end.recv(65536))] == list(ref.paths)

    # the sampler process's side: sample, decay, publish; the worker now reads the table
    sampler = LoadSampler(reader, proc=str(proc))
    sampler.get(ref)
    for _ in range(12):
        sampler.tick()
    publish(table, sampler)
    avg, running, total = shared.get(ref)
    assert 1.2 < avg[0] / 2048 < 1.3 and (running, total) == (2, 3)
    shared._sent[ref] -= RETRY_UNPUBLISHED  # published: refreshed once a minute only
    shared.get(ref)
    try:
        sampler_end.recv(65536)
        raise AssertionError("a published cgroup was registered again within a minute")
    except BlockingIOError:
        pass
    # published twice (the other copy of the table): still found
    sampler.tick()
    publish(table, sampler)
    assert shared.get(ref)[0][0] >= avg[0]
