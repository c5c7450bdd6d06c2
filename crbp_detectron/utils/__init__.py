"""Small shared helpers: headless plots (plotting) and Markdown tables (tables)."""
