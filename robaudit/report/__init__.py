"""Report layer: the versioned JSON report, its schema, and renderers."""

from robaudit.report.build import SCHEMA_VERSION, build_report
from robaudit.report.writer import read_report, write_json_atomic

__all__ = ["SCHEMA_VERSION", "build_report", "read_report", "write_json_atomic"]
