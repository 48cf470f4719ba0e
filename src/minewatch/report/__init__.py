"""Exports: monitoring lists (CSV, XLSX) and regional statistics."""
