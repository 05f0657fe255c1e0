"""JUnit XML: each gate is a test case, so CI shows gates as passed/failed tests."""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree as ET

from robaudit.report.render import PARTIAL_WARNING


def report_junit(report: dict[str, Any], gate_results: list[dict[str, Any]] | None = None) -> str:
    """JUnit XML for the gates of ``report`` (``gate_results`` overrides ``report['gates']``).

    Without gates, each result row becomes a passing case (or a skipped one when it did not run),
    so the suite still lists what was audited.
    """
    gates = report.get("gates") or [] if gate_results is None else gate_results
    path = str(report.get("model", {}).get("path", "model"))
    # CI tools split a classname at its last dot into package and class: a model path (slashes, its
    # extension's dot) becomes one word; the suite name keeps the path
    model = re.sub(r"[^A-Za-z0-9_-]+", "_", path.replace("\\", "/").rsplit("/", 1)[-1]).strip("_") or "model"
    suite = ET.Element("testsuite", name=f"robaudit {path}")
    failures = skipped = 0
    if gates:
        for g in gates:
            case = ET.SubElement(suite, "testcase", classname=f"robaudit.gates.{model}", name=g["gate"])
            value = "none" if g.get("value") is None else f"{g['value']:.6g}"
            if not g["passed"]:
                failures += 1
                fail = ET.SubElement(case, "failure", message=g.get("detail") or g["gate"], type="GateFailed")
                fail.text = (f"metric {g['metric']} {g['op']} {g['threshold']:g}: value {value}"
                             + (f" at {g['cell']}" if g.get("cell") else ""))
            else:
                ET.SubElement(case, "system-out").text = g.get("detail") or value
    else:
        if report.get("partial"):
            failures += 1
            case = ET.SubElement(suite, "testcase", classname=f"robaudit.results.{model}", name="complete report")
            ET.SubElement(case, "failure", message=PARTIAL_WARNING, type="PartialReport")
        for row in report.get("results", []):
            name = row.get("cell_id") or f"{row.get('attack')}/{row.get('target')}"
            case = ET.SubElement(suite, "testcase", classname=f"robaudit.results.{model}", name=str(name))
            if row.get("status") != "ok":
                skipped += 1
                ET.SubElement(case, "skipped", message=f"{row.get('status')}: {row.get('reason')}")
            else:
                ET.SubElement(case, "system-out").text = f"success_rate {row.get('success_rate'):.4g}"
        for entry in report.get("detection") or []:
            for row in entry.get("rows", []):
                case = ET.SubElement(suite, "testcase", classname=f"robaudit.detection.{model}",
                                     name=f"{entry.get('cell_id')} {row.get('attack')}/{row.get('cost')}")
                if row.get("status") != "ok":
                    skipped += 1
                    ET.SubElement(case, "skipped", message=f"{row.get('status')}: {row.get('reason')}")
                else:
                    ET.SubElement(case, "system-out").text = f"auroc {row.get('auroc'):.4g}"
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
