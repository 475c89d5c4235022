"""What a pytest junit report says ran: the harness prints this so "green" cannot mean "everything skipped"."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class JunitCounts:
    total: int
    passed: int
    failed: int
    errors: int
    skipped: int

    @property
    def ran(self) -> int:
        """Test cases that actually executed (not skipped)."""
        return self.total - self.skipped

    def summary(self) -> str:
        return (
            f"{self.ran} v2 tests ran in the VM (not skipped): {self.passed} passed, {self.failed} failed, "
            f"{self.errors} errors; {self.skipped} skipped"
        )


def count_junit(xml_text: str) -> JunitCounts:
    """Count test cases by outcome from the testcase elements themselves (not the suite attributes, which
    count a test whose setup and call both failed differently across pytest versions)."""
    root = ET.fromstring(xml_text)
    total = passed = failed = errors = skipped = 0
    for case in root.iter("testcase"):
        total += 1
        tags = {child.tag for child in case}
        if "skipped" in tags:
            skipped += 1
        elif "error" in tags:
            errors += 1
        elif "failure" in tags:
            failed += 1
        else:
            passed += 1
    return JunitCounts(total, passed, failed, errors, skipped)
