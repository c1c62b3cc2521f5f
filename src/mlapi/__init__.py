"""mlapi: a machine-learning prediction service built around Redis Streams."""
