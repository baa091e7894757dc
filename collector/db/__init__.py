"""The database: migrations, the instrument master, scheduled jobs."""
