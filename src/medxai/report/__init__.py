"""The audit report: a self-contained HTML page built from the run's JSON files."""

from medxai.report.build import build_report, render_html

__all__ = ["build_report", "render_html"]
