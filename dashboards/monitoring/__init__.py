"""The monitoring dashboard: what ``model_monitoring`` wrote, read from the warehouse."""
