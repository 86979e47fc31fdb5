"""The collector database: schema and migrations, writes, the report index, the file watch."""
