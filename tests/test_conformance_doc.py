"""The conformance statement names every resource the route table serves."""
from __future__ import annotations

import os
import re

from dicomweb_wsgi.app import make_app

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "conformance.md")
CONVERTER = re.compile(r"\{(\w+):\w+\}")


def test_conformance_doc_lists_every_route_template(tmp_path):
    with open(DOC, encoding="utf-8") as fh:
        text = fh.read()
    # Every optional route switched on, so none can hide from the check.
    app = make_app({"data_dir": str(tmp_path / "d"), "fsync": "false", "allow_delete": "true"})
    try:
        templates = {CONVERTER.sub(r"{\1}", entry.template) for entry in app.ctx.router.entries}
    finally:
        app.close()
    assert len(templates) > 30  # the whole table, not an empty router
    missing = sorted(t for t in templates if f"`{t}`" not in text and f"`{t}?" not in text)
    assert missing == []


def test_conformance_doc_names_every_npi_resource_and_failure_reason():
    with open(DOC, encoding="utf-8") as fh:
        text = fh.read()
    from dicomweb_wsgi.model import NPI_RESOURCES

    assert all(f"`{name}`" in text for name in NPI_RESOURCES)
    # The FailureReason codes the Store transactions report.
    assert all(f"| 0x{code:04X} |" in text for code in (0x0110, 0x0111, 0x0122, 0xA700, 0xA900, 0xA901, 0xC000))
