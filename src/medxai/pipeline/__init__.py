"""The audit (``medxai audit`` / ``medxai demo``): the stages of medxai composed as cached,
resumable steps (``audit.run_audit``) that end in ``report.json`` and ``report.html``."""
