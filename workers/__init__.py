"""The Celery pipeline: from a complete study to results in the PACS."""
