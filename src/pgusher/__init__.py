"""pgusher: a PostgreSQL connection pooler that reads PgBouncer's configuration unchanged."""

__version__ = "0.1.0"
VERSION_STRING = f"pgusher {__version__}"
