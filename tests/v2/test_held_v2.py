"""Held cgroup files (cgroup/held.py) on a real cgroup v2 kernel: the same cases as
tests/integration/test_cgroup_held.py, whose files are memory.max and memory.current here. A removed cgroup2
file must answer ENODEV through a held fd, as a v1 one does, for the reopen to happen."""

from __future__ import annotations

import pytest

from tests.integration.test_cgroup_held import (  # noqa: F401 - collected here, under the v2 mark
    test_a_forked_child_does_not_keep_its_parents_files,
    test_a_held_file_reread_gives_the_figures_of_now,
    test_a_removed_cgroup_is_not_read_through_its_old_file,
    test_budget_and_idle_files_are_closed,
    test_regular_files_are_not_held,
    test_the_budget_leaves_most_fds_to_the_rest,
    test_the_reader_holds_its_render_files,
)

pytestmark = pytest.mark.v2
